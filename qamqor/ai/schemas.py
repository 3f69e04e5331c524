"""The AI API's answers (Pydantic; the ORM rows stay in ``models.py``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from qamqor.ai.models import AIFinding, AIImage, AIStudy
from qamqor.core.i18n import messages_from_json


class FindingOut(BaseModel):
    rank: int
    x: float
    """Column of the finding's centre in the source image's pixels (from 0)."""
    y: float
    score: float
    label: str

    @classmethod
    def of(cls, row: AIFinding) -> FindingOut:
        return cls(
            rank=row.rank,
            x=round(row.x, 1),
            y=round(row.y, 1),
            score=round(row.score, 4),
            label=row.label,
        )


class ReasonOut(BaseModel):
    """One reason as a message id of Qamqor's catalogues and its arguments (``%(name)s``)."""

    msgid: str
    args: dict[str, str | int | float]
    text: str
    """The English text."""

    @classmethod
    def of_stored(cls, stored: object) -> list[ReasonOut]:
        return [
            cls(msgid=m.msgid, args=dict(m.args), text=m.english())
            for m in messages_from_json(stored)
        ]


class ImageOut(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str
    task: str
    view: str
    laterality: str
    score: float | None
    model: str
    reason: str
    reasons: list[ReasonOut]
    overlay_sop_instance_uid: str
    findings: list[FindingOut]

    @classmethod
    def of(cls, row: AIImage) -> ImageOut:
        return cls(
            sop_instance_uid=row.sop_instance_uid,
            series_instance_uid=row.series_instance_uid,
            task=row.task,
            view=row.view,
            laterality=row.laterality,
            score=None if row.score is None else round(row.score, 4),
            model=row.model,
            reason=row.reason,
            reasons=ReasonOut.of_stored(row.reason_messages),
            overlay_sop_instance_uid=row.overlay_sop_instance_uid,
            findings=[FindingOut.of(f) for f in row.findings],
        )


class StudyOut(BaseModel):
    study_instance_uid: str
    status: str
    """``queued``, ``running``, ``done``, ``failed``."""
    priority: str
    """``high``, ``medium``, ``low``, ``not_analysed``; "" while pending."""
    priority_rank: int
    task: str
    score: float | None
    model: str
    reason: str
    """In English; ``reasons`` holds the same as message ids and arguments to translate."""
    reasons: list[ReasonOut]
    breast_scores: dict[str, float]
    report_sop_instance_uid: str
    attempts: int
    queued_at: datetime
    priority_at: datetime | None
    """When the current priority was set."""
    finished_at: datetime | None

    @classmethod
    def of(cls, row: AIStudy) -> StudyOut:
        breasts: dict[str, float] = {}
        for part in filter(None, row.breast_scores.split(";")):
            side, _, value = part.partition("=")
            breasts[side] = float(value)
        return cls(
            study_instance_uid=row.study_instance_uid,
            status=row.status,
            priority=row.priority,
            priority_rank=row.priority_rank,
            task=row.task,
            score=None if row.score is None else round(row.score, 4),
            model=row.model,
            reason=row.reason,
            reasons=ReasonOut.of_stored(row.reason_messages),
            breast_scores=breasts,
            report_sop_instance_uid=row.report_sop_instance_uid,
            attempts=row.attempts,
            queued_at=row.queued_at,
            priority_at=row.priority_at,
            finished_at=row.finished_at,
        )


class StudyDetailOut(StudyOut):
    images: list[ImageOut]

    @classmethod
    def of(cls, row: AIStudy) -> StudyDetailOut:
        base = StudyOut.of(row).model_dump()
        return cls(**base, images=[ImageOut.of(i) for i in row.images])


class FailureOut(BaseModel):
    study_instance_uid: str
    error_type: str
    reason: str
    failed_at: datetime
