"""core: index of the audit trail by actor and action (sign-in throttling)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 07:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_audit_events_actor", "audit_events", ["actor", "action", "at"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_actor", table_name="audit_events")
