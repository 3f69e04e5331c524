"""ai: reasons kept as translatable messages

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before this revision keep their English ``reason``; pages show it as is.
    for table in ("ai_studies", "ai_images"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("reason_messages", sa.JSON(), nullable=False, server_default="[]")
            )


def downgrade() -> None:
    for table in ("ai_studies", "ai_images"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("reason_messages")
