"""The worklist: open studies, most suspicious first, one SQL query per page.

Order (module contract, also shown to the radiologists):

1. AI priority: high, medium, low, not analysed, then studies still being analysed;
2. clinical urgency: emergency, urgent, routine;
3. waiting time: the study that reached the archive first comes first.

The page's rows come from one query (archive study + patient, AI result, reading state, outer
joins), paginated in SQL; the AI's top finding of every row on the page comes from a second
query. No query per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session

from qamqor.ai import Priority, TopFinding, top_findings
from qamqor.ai import study_results as ai_study_results
from qamqor.core.i18n import Message, messages_from_json
from qamqor.pacs import facilities as archive_facilities
from qamqor.pacs import image_modalities, name_search_key, study_has_modality, worklist_studies
from qamqor.reading.enums import ReadingStatus, Urgency
from qamqor.reading.models import ReadingStudy

MAX_PAGE_SIZE = 200
#: The AI filter's values: a priority, or ``pending`` (not analysed yet).
PENDING = "pending"
AI_FLAGS = (*(p.value for p in Priority), PENDING)
STATUS_FILTERS = ("open", "new", "in_progress", "reported", "all")


@dataclass
class WorklistFilter:
    """The worklist's filters as typed (``ValueError`` for a malformed date)."""

    q: str = ""
    modality: str = ""
    facility: str = ""
    date_from: str = ""
    date_to: str = ""
    ai: str = ""
    status: str = "open"

    def normalised(self) -> WorklistFilter:
        return WorklistFilter(
            q=self.q.strip()[:64],
            modality=self.modality.strip().upper()[:16],
            facility=self.facility.strip()[:64],
            date_from=_dicom_date(self.date_from),
            date_to=_dicom_date(self.date_to),
            ai=self.ai if self.ai in AI_FLAGS else "",
            status=self.status if self.status in STATUS_FILTERS else "open",
        )


def _dicom_date(value: str) -> str:
    value = value.strip()
    if not value:
        return ""
    return date.fromisoformat(value).strftime("%Y%m%d")


@dataclass
class WorklistRow:
    study_pk: int
    study_instance_uid: str
    patient_name: str
    patient_id: str
    patient_sex: str
    birth_date: str
    study_date: str
    study_time: str
    accession: str
    description: str
    facility: str
    modalities: str
    received_at: datetime
    ai_status: str
    ai_priority: str
    ai_score: float | None
    ai_task: str
    ai_reason: str
    """In English; ``ai_reasons`` holds the same as messages to translate."""
    ai_reasons: list[Message]
    breast_scores: dict[str, float]
    status: ReadingStatus
    urgency: Urgency
    claimed_by: str
    claim_expires_at: datetime | None
    agreement: str
    top_finding: TopFinding | None = None

    @property
    def score_percent(self) -> int | None:
        return None if self.ai_score is None else round(self.ai_score * 100)

    @property
    def suspicious_breast(self) -> str:
        """``R`` or ``L``: the breast with the higher score (mammography)."""
        if not self.breast_scores:
            return ""
        return max(self.breast_scores.items(), key=lambda item: item[1])[0]


@dataclass
class WorklistPage:
    rows: list[WorklistRow]
    page: int
    size: int
    has_next: bool
    facilities: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)


def parse_breast_scores(text: str) -> dict[str, float]:
    scores: dict[str, float] = {}
    for piece in text.split(";"):
        side, _, value = piece.partition("=")
        try:
            if side in ("L", "R"):
                scores[side] = float(value)
        except ValueError:
            continue
    return scores


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def status_expression(now: datetime) -> Any:
    """The reading status as SQL: a lapsed claim with no draft is new again."""
    return case(
        (ReadingStudy.status == ReadingStatus.REPORTED, literal(ReadingStatus.REPORTED.value)),
        (ReadingStudy.claim_expires_at > now, literal(ReadingStatus.IN_PROGRESS.value)),
        (
            ReadingStudy.status == ReadingStatus.IN_PROGRESS,
            literal(ReadingStatus.IN_PROGRESS.value),
        ),
        else_=literal(ReadingStatus.NEW.value),
    )


def query_worklist(
    session: Session, filters: WorklistFilter, *, now: datetime, page: int = 1, size: int = 50
) -> WorklistPage:
    """One page of the worklist under ``filters`` (already normalised)."""
    page = max(page, 1)
    size = min(max(size, 1), MAX_PAGE_SIZE)
    status = status_expression(now)
    study = worklist_studies()
    ai = ai_study_results()
    rank = func.coalesce(ai.c.priority_rank, -1)
    urgency = func.coalesce(ReadingStudy.urgency, 0)
    query = (
        select(
            study.c.pk,
            study.c.study_instance_uid,
            study.c.patient_name,
            study.c.patient_id,
            study.c.patient_sex,
            study.c.patient_birth_date,
            study.c.study_date,
            study.c.study_time,
            study.c.accession_number,
            study.c.study_description,
            study.c.institution_name,
            study.c.modalities_in_study,
            study.c.created_at,
            ai.c.status.label("ai_status"),
            ai.c.priority,
            ai.c.score,
            ai.c.task,
            ai.c.reason,
            ai.c.reason_messages,
            ai.c.breast_scores,
            status.label("reading_status"),
            urgency.label("urgency"),
            ReadingStudy.claimed_by,
            ReadingStudy.claim_expires_at,
            ReadingStudy.agreement,
        )
        .select_from(study)
        .outerjoin(ai, ai.c.study_instance_uid == study.c.study_instance_uid)
        .outerjoin(ReadingStudy, ReadingStudy.study_pk == study.c.pk)
    )
    conditions: list[Any] = []
    if filters.status == "open":
        conditions.append(status != ReadingStatus.REPORTED.value)
    elif filters.status != "all":
        conditions.append(status == filters.status)
    if filters.modality:
        conditions.append(study_has_modality(study.c.pk, filters.modality))
    if filters.facility:
        conditions.append(study.c.institution_name == filters.facility)
    if filters.date_from:
        conditions.append(study.c.study_date >= filters.date_from)
    if filters.date_to:
        conditions.append(study.c.study_date <= filters.date_to)
    if filters.ai == PENDING:
        conditions.append(or_(ai.c.study_instance_uid.is_(None), ai.c.priority == ""))
    elif filters.ai:
        conditions.append(ai.c.priority == filters.ai)
    if filters.q:
        text = _like_escape(filters.q)
        name = _like_escape(name_search_key("^".join(filters.q.split())))
        conditions.append(
            or_(
                study.c.patient_name_search.like(f"{name}%", escape="\\"),
                study.c.patient_name_search.like(f"%^{name}%", escape="\\"),
                study.c.patient_name_search.like(f"% {name}%", escape="\\"),
                study.c.patient_id.like(f"{text}%", escape="\\"),
                study.c.patient_id.like(f"{text.upper()}%", escape="\\"),
                study.c.accession_number.like(f"{text}%", escape="\\"),
                study.c.accession_number.like(f"{text.upper()}%", escape="\\"),
            )
        )
    if conditions:
        query = query.where(and_(*conditions))
    query = (
        query.order_by(rank.desc(), urgency.desc(), study.c.created_at, study.c.pk)
        .limit(size + 1)
        .offset((page - 1) * size)
    )
    found = session.execute(query).all()
    has_next = len(found) > size
    rows = [_row(r) for r in found[:size]]
    _attach_top_findings(session, rows)
    return WorklistPage(rows=rows, page=page, size=size, has_next=has_next)


def facilities(session: Session) -> list[str]:
    """The facilities (Institution Name) that have sent studies, for the filter."""
    return archive_facilities(session, limit=500)


def modalities(session: Session) -> list[str]:
    """The modalities the archive holds images of, for the filter (MG, CR, DX, RG, OT, CT...)."""
    return image_modalities(session)


def _row(r: Any) -> WorklistRow:
    return WorklistRow(
        study_pk=r.pk,
        study_instance_uid=r.study_instance_uid,
        patient_name=r.patient_name,
        patient_id=r.patient_id,
        patient_sex=r.patient_sex,
        birth_date=r.patient_birth_date,
        study_date=r.study_date,
        study_time=r.study_time,
        accession=r.accession_number,
        description=r.study_description,
        facility=r.institution_name,
        modalities=r.modalities_in_study.replace("\\", ", "),
        received_at=r.created_at,
        ai_status=r.ai_status or "",
        ai_priority=r.priority or "",
        ai_score=r.score,
        ai_task=r.task or "",
        ai_reason=r.reason or "",
        ai_reasons=messages_from_json(r.reason_messages),
        breast_scores=parse_breast_scores(r.breast_scores or ""),
        status=ReadingStatus(r.reading_status),
        urgency=Urgency(int(r.urgency or 0)),
        claimed_by=r.claimed_by or "",
        claim_expires_at=r.claim_expires_at,
        agreement=r.agreement or "",
    )


def _attach_top_findings(session: Session, rows: list[WorklistRow]) -> None:
    """Each analysed row's highest-scoring finding, with its image's size (one query)."""
    uids = [r.study_instance_uid for r in rows if r.ai_score is not None]
    best = top_findings(session, uids)
    for row in rows:
        row.top_finding = best.get(row.study_instance_uid)
