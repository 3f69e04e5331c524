"""The audit trail: every read or change of patient data is written here."""

from __future__ import annotations

from sqlalchemy.orm import Session

from qamqor.core.models import AuditEvent


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str = "",
    source: str = "",
    detail: str = "",
) -> None:
    """Add one audit event to ``session`` (committed with the caller's transaction)."""
    session.add(
        AuditEvent(
            actor=actor[:64],
            action=action[:32],
            object_type=object_type[:32],
            object_id=object_id[:128],
            source=source[:64],
            detail=detail,
        )
    )
