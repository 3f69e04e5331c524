"""Read side of the AI results: the worklist order, one study's results, failures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from qamqor.ai.enums import JobStatus
from qamqor.ai.errors import AIError
from qamqor.ai.models import AIImage, AIStudy
from qamqor.ai.pipeline import JOB_NAME
from qamqor.core import audit
from qamqor.core.audit import AuditAction
from qamqor.core.db import begin_write
from qamqor.core.errors import ErrorKind, NotFoundError
from qamqor.core.models import JobFailure
from qamqor.pacs import study_uid_column

ORDERS = ("priority", "recent")


class AIStudyNotFoundError(NotFoundError, AIError):
    """No AI result for that study (not in the archive, or not announced stable yet)."""

    kind = ErrorKind.NOT_FOUND


@dataclass(frozen=True)
class Viewer:
    """Who reads AI results (for the audit trail): username and client address."""

    username: str
    source: str = ""


def list_studies(
    session: Session,
    *,
    order: str = "priority",
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[AIStudy]:
    """AI rows of studies: most suspicious first (priority, then score, then newest result),
    or the most recently finished first."""
    query = select(AIStudy)
    if status:
        query = query.where(AIStudy.status == JobStatus(status))
    if order == "recent":
        query = query.order_by(AIStudy.finished_at.desc(), AIStudy.id.desc())
    else:
        query = query.order_by(
            AIStudy.priority_rank.desc(),
            func.coalesce(AIStudy.score, -1.0).desc(),
            AIStudy.id.desc(),
        )
    return list(session.scalars(query.limit(limit).offset(offset)))


def get_study(session: Session, study_instance_uid: str) -> AIStudy:
    row = session.scalar(
        select(AIStudy)
        .where(AIStudy.study_instance_uid == study_instance_uid)
        .options(selectinload(AIStudy.images).selectinload(AIImage.findings))
    )
    if row is None:
        raise AIStudyNotFoundError(f"no AI result for study {study_instance_uid}")
    return row


def failures(session: Session) -> list[JobFailure]:
    """Analyses that failed for good (not yet marked resolved), newest first."""
    return list(
        session.scalars(
            select(JobFailure)
            .where(JobFailure.job == JOB_NAME, JobFailure.resolved.is_(False))
            .order_by(JobFailure.failed_at.desc())
            .limit(500)
        )
    )


def priority_order() -> list[Any]:
    """Sort keys for a query on ``pacs_studies``: AI priority, then score (studies with no AI
    row yet sort with the pending ones)."""
    study_uid = study_uid_column()
    rank = (
        select(AIStudy.priority_rank)
        .where(AIStudy.study_instance_uid == study_uid)
        .correlate_except(AIStudy)
        .scalar_subquery()
    )
    score = (
        select(AIStudy.score)
        .where(AIStudy.study_instance_uid == study_uid)
        .correlate_except(AIStudy)
        .scalar_subquery()
    )
    return [func.coalesce(rank, -1).desc(), func.coalesce(score, -1.0).desc()]


def rows_for(session: Session, study_uids: list[str]) -> dict[str, AIStudy]:
    if not study_uids:
        return {}
    rows = session.scalars(select(AIStudy).where(AIStudy.study_instance_uid.in_(study_uids)))
    return {row.study_instance_uid: row for row in rows}


def _seen(session: Session, viewer: Viewer, study_uids: Sequence[str], how: str) -> None:
    """Audit that ``viewer`` read these studies' AI results, and commit."""
    begin_write(session)  # the reads are done; SQLite: see begin_write
    audit.record(
        session,
        AuditAction.VIEW,
        actor=viewer.username,
        object_type="ai_study",
        object_id=list(study_uids),
        source=viewer.source,
        detail=how,
    )
    session.commit()


def studies_seen_by(
    session: Session,
    viewer: Viewer,
    *,
    order: str = "priority",
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[AIStudy]:
    """:func:`list_studies`, written to the audit trail (one event per study). Commits."""
    rows = list_studies(session, order=order, status=status, limit=limit, offset=offset)
    _seen(session, viewer, [row.study_instance_uid for row in rows], "ai studies list")
    return rows


def study_seen_by(session: Session, viewer: Viewer, study_instance_uid: str) -> AIStudy:
    """:func:`get_study`, written to the audit trail. Commits."""
    row = get_study(session, study_instance_uid)
    _seen(session, viewer, [study_instance_uid], "ai study")
    return row
