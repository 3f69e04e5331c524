"""The AI's results, read by other parts: typed rows and a joinable selectable.

Other parts (reading) use these instead of the AI's tables: :func:`study_result` (a study's
result with its images and findings, for a viewer), :func:`priority_of`, :func:`top_findings`
(the best finding of each of some studies, one query), :func:`study_results` (a subquery to
join on ``study_instance_uid`` where the caller sorts or filters by the AI in SQL).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Subquery, select
from sqlalchemy.orm import Session, selectinload

from qamqor.ai.models import AIFinding, AIImage, AIStudy
from qamqor.core.i18n import Message, messages_from_json
from qamqor.pacs import instance_sizes

__all__ = [
    "FindingMark",
    "ImageResult",
    "StudyResult",
    "TopFinding",
    "priority_of",
    "study_result",
    "study_results",
    "top_findings",
]


@dataclass(frozen=True)
class FindingMark:
    """Where the analyser looked: ``x``, ``y`` in the image's pixels (rank 1 is the best)."""

    rank: int
    x: float
    y: float
    score: float


@dataclass(frozen=True)
class ImageResult:
    """One analysed image."""

    sop_instance_uid: str
    series_instance_uid: str
    view: str
    laterality: str
    score: float | None
    overlay_sop_instance_uid: str
    """Our overlay of this image stored in the archive ("" when none)."""
    findings: tuple[FindingMark, ...]


@dataclass(frozen=True)
class StudyResult:
    """A study's AI triage (``priority`` "" while pending; see :class:`~qamqor.ai.enums`)."""

    study_instance_uid: str
    status: str
    task: str
    score: float | None
    priority: str
    model: str
    reason: str
    """In English; ``reason_messages`` holds the same as messages to translate."""
    reason_messages: list[Message]
    breast_scores: str
    """``L=0.1234;R=0.5678`` (mammography)."""
    images: tuple[ImageResult, ...]


@dataclass(frozen=True)
class TopFinding:
    """A study's highest-scoring finding with its image (size from the archive's index)."""

    x: float
    y: float
    score: float
    laterality: str
    view: str
    rows: int | None
    columns: int | None

    @property
    def lung_zone(self) -> str:
        """``RU`` .. ``LL`` for a frontal chest film (patient's right on the image's left)."""
        if not self.rows or not self.columns:
            return ""
        side = "R" if self.x < self.columns / 2 else "L"
        third = min(int(3 * self.y / self.rows), 2)
        return side + "UML"[third]


def study_result(session: Session, study_instance_uid: str) -> StudyResult | None:
    """The study's result with its images and their findings (None: never queued)."""
    row = session.scalar(
        select(AIStudy)
        .where(AIStudy.study_instance_uid == study_instance_uid)
        .options(selectinload(AIStudy.images).selectinload(AIImage.findings))
    )
    if row is None:
        return None
    return StudyResult(
        study_instance_uid=row.study_instance_uid,
        status=row.status,
        task=row.task,
        score=row.score,
        priority=row.priority,
        model=row.model,
        reason=row.reason,
        reason_messages=messages_from_json(row.reason_messages),
        breast_scores=row.breast_scores,
        images=tuple(
            ImageResult(
                sop_instance_uid=image.sop_instance_uid,
                series_instance_uid=image.series_instance_uid,
                view=image.view,
                laterality=image.laterality,
                score=image.score,
                overlay_sop_instance_uid=image.overlay_sop_instance_uid,
                findings=tuple(FindingMark(f.rank, f.x, f.y, f.score) for f in image.findings),
            )
            for image in row.images
        ),
    )


def priority_of(session: Session, study_instance_uid: str) -> str:
    """The study's AI priority ("" while pending or never queued)."""
    value = session.scalar(
        select(AIStudy.priority).where(AIStudy.study_instance_uid == study_instance_uid)
    )
    return value or ""


def study_results() -> Subquery:
    """The AI's per-study results, to (outer) join on ``study_instance_uid``.

    Columns: ``study_instance_uid``, ``status``, ``task``, ``score``, ``priority``,
    ``priority_rank`` (higher first; -1 while pending), ``model``, ``reason``,
    ``reason_messages`` (stored JSON), ``breast_scores``.
    """
    return select(
        AIStudy.study_instance_uid,
        AIStudy.status,
        AIStudy.task,
        AIStudy.score,
        AIStudy.priority,
        AIStudy.priority_rank,
        AIStudy.model,
        AIStudy.reason,
        AIStudy.reason_messages,
        AIStudy.breast_scores,
    ).subquery("ai_study_results")


def top_findings(session: Session, study_uids: Collection[str]) -> dict[str, TopFinding]:
    """Each study's highest-scoring rank-1 finding, with its image's size (one query)."""
    if not study_uids:
        return {}
    sizes = instance_sizes()
    query = (
        select(
            AIStudy.study_instance_uid,
            AIFinding.x,
            AIFinding.y,
            AIFinding.score,
            AIImage.laterality,
            AIImage.view,
            sizes.c.rows,
            sizes.c.columns,
        )
        .join(AIImage, AIImage.ai_study_id == AIStudy.id)
        .join(AIFinding, AIFinding.ai_image_id == AIImage.id)
        .outerjoin(sizes, sizes.c.sop_instance_uid == AIImage.sop_instance_uid)
        .where(AIStudy.study_instance_uid.in_(list(study_uids)), AIFinding.rank == 1)
    )
    best: dict[str, TopFinding] = {}
    for r in session.execute(query):
        current = best.get(r.study_instance_uid)
        if current is None or r.score > current.score:
            best[r.study_instance_uid] = TopFinding(
                r.x, r.y, r.score, r.laterality, r.view, r.rows, r.columns
            )
    return best
