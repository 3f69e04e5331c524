"""The reading service: claims, urgency, the viewer's data, reports (draft, sign, amend).

Services take keyword-only sessions and never import FastAPI. Signing stores the SR and the
PDF in the archive (like any DICOM sender, under UIDs derived from the study and version, so a
retried signature stores nothing twice) before the report row is marked signed in one
transaction: a failure leaves the draft as it was.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydicom import Dataset, dcmread
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from qamqor.ai.models import AIImage, AIStudy
from qamqor.core.db import begin_write, utcnow
from qamqor.pacs.models import Instance, Patient, Series, Study
from qamqor.pacs.parsing import parse_part10
from qamqor.pacs.service import ArchiveService
from qamqor.reading import documents
from qamqor.reading.enums import Agreement, ReadingStatus, ReportStatus, Template, Urgency
from qamqor.reading.errors import (
    InvalidReportError,
    ReportNotFoundError,
    ReportSignedError,
    StudyClaimedError,
    StudyNotFoundError,
)
from qamqor.reading.models import ReadingStudy, Report
from qamqor.reading.schemas import ReportContent

logger = logging.getLogger(__name__)

IMAGE_MODALITIES = frozenset({"CR", "DX", "MG", "RG", "CT", "MR", "US", "XA", "RF", "PX", "IO"})
#: Our own derived objects: not images to hang.
DERIVED_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",
        "1.2.840.10008.5.1.4.1.1.88.22",
        "1.2.840.10008.5.1.4.1.1.88.33",
        "1.2.840.10008.5.1.4.1.1.88.34",
        documents.ENCAPSULATED_PDF,
    }
)


@dataclass(frozen=True)
class Actor:
    """Who acts (from the web layer's principal)."""

    id: int
    username: str
    full_name: str = ""


# Study state ---------------------------------------------------------------------------------
def _study(session: Session, study_instance_uid: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        raise StudyNotFoundError(f"no study {study_instance_uid} in the archive")
    return study


def reading_row(session: Session, study_instance_uid: str, *, lock: bool = False) -> ReadingStudy:
    """The study's reading row, created if absent (safe against a concurrent creation)."""
    study = _study(session, study_instance_uid)
    query = select(ReadingStudy).where(ReadingStudy.study_pk == study.id)
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is not None:
        return row
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(ReadingStudy)
        .values(
            study_pk=study.id,
            study_instance_uid=study.study_instance_uid,
            status=ReadingStatus.NEW.value,
            urgency=0,
            claimed_by="",
            agreement="",
            ai_priority="",
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    row = session.scalar(query)
    assert row is not None
    return row


def claim_is_live(row: ReadingStudy, now: datetime) -> bool:
    return bool(row.claimed_by_id and row.claim_expires_at and row.claim_expires_at > now)


def claim(
    session: Session, *, study_instance_uid: str, actor: Actor, minutes: int, force: bool = False
) -> ReadingStudy:
    """Claim the study for ``actor`` (or renew their claim) for ``minutes``.

    Raises ``StudyClaimedError`` while another radiologist's claim is live, unless ``force``
    (taking it over, which the caller audits). The caller commits.
    """
    now = utcnow()
    row = reading_row(session, study_instance_uid, lock=True)
    if claim_is_live(row, now) and row.claimed_by_id != actor.id and not force:
        raise StudyClaimedError(row.claimed_by)
    row.claimed_by_id = actor.id
    row.claimed_by = actor.username
    row.claim_expires_at = now + timedelta(minutes=minutes)
    row.updated_at = now
    return row


def release(session: Session, *, study_instance_uid: str, actor: Actor) -> None:
    """Give up ``actor``'s claim (someone else's claim is left alone). The caller commits."""
    row = reading_row(session, study_instance_uid, lock=True)
    if row.claimed_by_id == actor.id:
        row.claimed_by_id = None
        row.claimed_by = ""
        row.claim_expires_at = None
        row.updated_at = utcnow()


def set_urgency(session: Session, *, study_instance_uid: str, urgency: Urgency) -> None:
    row = reading_row(session, study_instance_uid, lock=True)
    row.urgency = int(urgency)
    row.updated_at = utcnow()


# The viewer's data -----------------------------------------------------------------------------
@dataclass
class ImageView:
    sop_instance_uid: str
    series_instance_uid: str
    rows: int | None
    columns: int | None
    frames: int
    view: str
    laterality: str
    ai_score: float | None = None
    overlay_sop_instance_uid: str = ""
    overlay_series_instance_uid: str = ""
    findings: list[dict[str, float]] = field(default_factory=list)

    @property
    def hanging_key(self) -> str:
        """``RCC``, ``LMLO``...: a mammogram's place in the hanging ("" for other images)."""
        view = self.view.upper()
        if self.laterality in ("L", "R") and view in ("CC", "MLO", "ML", "LM", "XCCL"):
            return self.laterality + ("MLO" if view in ("MLO", "ML", "LM") else "CC")
        return ""


@dataclass
class SeriesView:
    series_instance_uid: str
    number: int | None
    modality: str
    description: str
    images: list[ImageView]


@dataclass
class StudyView:
    study_instance_uid: str
    patient_pk: int
    patient_name: str
    patient_id: str
    patient_sex: str
    birth_date: str
    study_date: str
    accession: str
    description: str
    facility: str
    modalities: list[str]
    series: list[SeriesView]
    ai: AIStudy | None
    template: Template

    @property
    def images(self) -> list[ImageView]:
        return [image for series in self.series for image in series.images]

    def hanging(self) -> list[ImageView | None]:
        """Mammography: RCC, LCC, RMLO, LMLO (the most recent of each; None where absent)."""
        found: dict[str, ImageView] = {}
        for image in self.images:
            if image.hanging_key:
                found[image.hanging_key] = image
        return [found.get(key) for key in ("RCC", "LCC", "RMLO", "LMLO")]


def study_view(session: Session, study_instance_uid: str) -> StudyView:
    """The study's patient, series and images, with the AI's per-image results (3 queries)."""
    study = _study(session, study_instance_uid)
    patient = session.get(Patient, study.patient_pk)
    assert patient is not None
    rows = session.execute(
        select(Series, Instance)
        .join(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk == study.id)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    ).all()
    ai = session.scalar(select(AIStudy).where(AIStudy.study_instance_uid == study_instance_uid))
    ai_images: dict[str, AIImage] = {}
    if ai is not None:
        for analysed in ai.images:
            ai_images[analysed.sop_instance_uid] = analysed
    overlays = {
        i.overlay_sop_instance_uid for i in ai_images.values() if i.overlay_sop_instance_uid
    }
    series_views: dict[int, SeriesView] = {}
    modalities: set[str] = set()
    series_of_instance = {i.sop_instance_uid: s.series_instance_uid for s, i in rows}
    for series, instance in rows:
        if instance.sop_class_uid in DERIVED_SOP_CLASSES or instance.sop_instance_uid in overlays:
            continue
        if not instance.rows:
            continue
        view = series_views.get(series.id)
        if view is None:
            view = series_views[series.id] = SeriesView(
                series.series_instance_uid,
                series.series_number,
                series.modality,
                series.series_description,
                [],
            )
        modalities.add(series.modality)
        ai_image = ai_images.get(instance.sop_instance_uid)
        image = ImageView(
            sop_instance_uid=instance.sop_instance_uid,
            series_instance_uid=series.series_instance_uid,
            rows=instance.rows,
            columns=instance.columns,
            frames=instance.number_of_frames or 1,
            view=(ai_image.view if ai_image and ai_image.view else instance.view_position) or "",
            laterality=(
                (ai_image.laterality if ai_image and ai_image.laterality else "")
                or instance.image_laterality
                or series.laterality
            )[:1],
        )
        if ai_image is not None:
            image.ai_score = ai_image.score
            if ai_image.overlay_sop_instance_uid in series_of_instance:
                image.overlay_sop_instance_uid = ai_image.overlay_sop_instance_uid
                image.overlay_series_instance_uid = series_of_instance[
                    ai_image.overlay_sop_instance_uid
                ]
            image.findings = [
                {"rank": f.rank, "x": f.x, "y": f.y, "score": round(f.score, 4)}
                for f in ai_image.findings
            ]
        view.images.append(image)
    is_mammo = "MG" in modalities or (ai is not None and ai.task == "mammo")
    if not is_mammo and any(image.hanging_key for v in series_views.values() for image in v.images):
        is_mammo = True
    return StudyView(
        study_instance_uid=study.study_instance_uid,
        patient_pk=patient.id,
        patient_name=patient.patient_name,
        patient_id=patient.patient_id,
        patient_sex=patient.patient_sex,
        birth_date=patient.patient_birth_date,
        study_date=study.study_date,
        accession=study.accession_number,
        description=study.study_description,
        facility=study.institution_name,
        modalities=sorted(modalities),
        series=list(series_views.values()),
        ai=ai,
        template=Template.MAMMO if is_mammo else Template.CHEST,
    )


@dataclass(frozen=True)
class PriorStudy:
    study_instance_uid: str
    study_date: str
    description: str
    modalities: str


def priors(session: Session, view: StudyView) -> list[PriorStudy]:
    """The same patient's other studies, newest first."""
    found = session.execute(
        select(
            Study.study_instance_uid,
            Study.study_date,
            Study.study_description,
            Study.modalities_in_study,
        )
        .where(
            Study.patient_pk == view.patient_pk,
            Study.study_instance_uid != view.study_instance_uid,
        )
        .order_by(Study.study_date.desc(), Study.id.desc())
        .limit(20)
    ).all()
    return [PriorStudy(r[0], r[1], r[2], r[3].replace("\\", ", ")) for r in found]


# Reports ------------------------------------------------------------------------------------
def reports_of(session: Session, study_instance_uid: str) -> list[Report]:
    """Every version, newest first."""
    return list(
        session.scalars(
            select(Report)
            .where(Report.study_instance_uid == study_instance_uid)
            .order_by(Report.version.desc())
        )
    )


def content_of(report: Report) -> ReportContent:
    return ReportContent.model_validate(json.loads(report.content))


def save_draft(
    session: Session,
    *,
    study_instance_uid: str,
    actor: Actor,
    content: ReportContent,
    language: str,
    amendment_reason: str = "",
) -> Report:
    """Save the editable version: the open draft, or a new version after a signed one.

    The caller commits.
    """
    reading = reading_row(session, study_instance_uid, lock=True)
    latest = session.scalar(
        select(Report)
        .where(Report.study_instance_uid == study_instance_uid)
        .order_by(Report.version.desc())
        .limit(1)
        .with_for_update()
    )
    now = utcnow()
    if latest is not None and latest.status == ReportStatus.DRAFT.value:
        report = latest
    else:
        if latest is not None and not amendment_reason.strip():
            raise InvalidReportError("an amendment of a signed report needs a reason")
        report = Report(
            study_instance_uid=study_instance_uid,
            version=(latest.version + 1) if latest is not None else 1,
            status=ReportStatus.DRAFT.value,
            template=content.template.value,
            amends_id=latest.id if latest is not None else None,
            created_at=now,
        )
        session.add(report)
    report.template = content.template.value
    report.content = content.model_dump_json()
    report.language = language
    report.author_id = actor.id
    report.author = actor.username
    report.author_name = actor.full_name
    report.updated_at = now
    if amendment_reason.strip():
        report.amendment_reason = amendment_reason.strip()[:2000]
    if reading.status != ReadingStatus.REPORTED.value:
        reading.status = ReadingStatus.IN_PROGRESS.value
    reading.updated_at = now
    session.flush()
    return report


def ai_priority_of(session: Session, study_instance_uid: str) -> str:
    """The study's AI priority ("" while pending)."""
    value = session.scalar(
        select(AIStudy.priority).where(AIStudy.study_instance_uid == study_instance_uid)
    )
    return value or ""


def suggested_agreement(content: ReportContent, ai_priority: str) -> Agreement | None:
    """The radiologist against the AI: flagged means priority ``high`` (the model's default
    operating point). None when the AI did not analyse the study."""
    if ai_priority not in ("high", "medium", "low"):
        return None
    flagged = ai_priority == "high"
    if content.suspicious == flagged:
        return Agreement.AGREE
    return Agreement.AI_MISSED if content.suspicious else Agreement.AI_FALSE_ALARM


def _evidence(archive: ArchiveService, session: Session, study_instance_uid: str) -> Dataset:
    """A header of one of the study's own images (patient and study attributes for the SR)."""
    for instance in archive.instances_of(session, study_instance_uid=study_instance_uid):
        if instance.sop_class_uid in DERIVED_SOP_CLASSES or not instance.rows:
            continue
        data = archive.read_instance_bytes(instance.sop_instance_uid)
        return dcmread(io.BytesIO(data), stop_before_pixels=True)
    raise InvalidReportError("the study has no image to report on")


def sign(
    session: Session,
    *,
    archive: ArchiveService,
    study_instance_uid: str,
    actor: Actor,
    agreement: Agreement | None,
    organisation: str = "",
) -> Report:
    """Sign the open draft: SR and PDF into the archive, then the rows, in one transaction.

    Commits. Raises ``InvalidReportError`` (what is missing) or ``ReportSignedError``.
    """
    draft = session.scalar(
        select(Report)
        .where(Report.study_instance_uid == study_instance_uid)
        .order_by(Report.version.desc())
        .limit(1)
    )
    if draft is None:
        raise ReportNotFoundError("there is no report to sign; fill in the form first")
    if draft.status != ReportStatus.DRAFT.value:
        raise ReportSignedError("this report is signed already; amend it with a new version")
    content = content_of(draft)
    missing = content.missing_for_signing()
    if missing:
        raise InvalidReportError("the report is incomplete: " + ", ".join(missing))
    previous = session.get(Report, draft.amends_id) if draft.amends_id else None
    evidence = _evidence(archive, session, study_instance_uid)
    now = utcnow()
    signed = documents.SignedBy(
        actor.username,
        actor.full_name,
        organisation or str(evidence.get("InstitutionName", "")),
        now,
    )
    sr = documents.build_sr(
        evidence=evidence,
        content=content,
        signed=signed,
        version=draft.version,
        previous_sr_uid=previous.sr_sop_instance_uid if previous else "",
    )
    from qamqor.core.i18n import N_, gettext

    title = gettext(
        draft.language,
        N_("Mammography report")
        if content.template is Template.MAMMO
        else N_("Chest X-ray report"),
    )
    pdf = documents.build_pdf(
        content=content,
        language=draft.language,
        signed=signed,
        version=draft.version,
        patient_name=" ".join(p for p in str(evidence.get("PatientName", "")).split("^") if p),
        patient_id=str(evidence.get("PatientID", "")),
        study_date=str(evidence.get("StudyDate", "")),
        accession=str(evidence.get("AccessionNumber", "")),
        description=str(evidence.get("StudyDescription", "")),
        amended=previous is not None,
    )
    encapsulated = documents.build_encapsulated_pdf(
        evidence=evidence, pdf=pdf, version=draft.version, title=title, signed=signed
    )
    parsed = [parse_part10(documents.to_part10(ds)) for ds in (sr, encapsulated)]
    for result in archive.store_instances(parsed, source=f"reading:{actor.username}"[:64]):
        if isinstance(result, Exception):
            raise result
    # The archive has both; now the rows, all or nothing.
    begin_write(session)
    reading = reading_row(session, study_instance_uid, lock=True)
    draft = session.get(Report, draft.id, with_for_update=True)
    assert draft is not None
    if draft.status != ReportStatus.DRAFT.value:
        raise ReportSignedError("this report was signed meanwhile")
    draft.status = ReportStatus.SIGNED.value
    draft.signed_at = now
    draft.author_id = actor.id
    draft.author = actor.username
    draft.author_name = actor.full_name
    draft.sr_sop_instance_uid = str(sr.SOPInstanceUID)
    draft.pdf_sop_instance_uid = str(encapsulated.SOPInstanceUID)
    if previous is not None:
        previous.status = ReportStatus.SUPERSEDED.value
    ai_priority = ai_priority_of(session, study_instance_uid)
    reading.status = ReadingStatus.REPORTED.value
    reading.reported_at = now
    reading.agreement = agreement.value if agreement else ""
    reading.ai_priority = ai_priority
    reading.agreement_at = now if agreement else None
    reading.claimed_by_id = None
    reading.claimed_by = ""
    reading.claim_expires_at = None
    reading.updated_at = now
    session.commit()
    logger.info(
        "report signed: study %s version %d, SR %s",
        study_instance_uid,
        draft.version,
        sr.SOPInstanceUID,
    )
    return draft


def report_pdf(archive: ArchiveService, report: Report) -> bytes:
    """The signed report's PDF, read back from the archive."""
    if not report.pdf_sop_instance_uid:
        raise ReportNotFoundError("this version is not signed; it has no PDF")
    ds = dcmread(io.BytesIO(archive.read_instance_bytes(report.pdf_sop_instance_uid)))
    data = bytes(ds.EncapsulatedDocument)
    length = int(ds.get("EncapsulatedDocumentLength") or len(data))
    return data[:length]


def agreement_summary(
    session: Session, *, since: datetime | None = None, until: datetime | None = None
) -> list[dict[str, Any]]:
    """How often the radiologists agreed with the AI, per model (situational center, model
    monitoring): counts of ``agree``, ``ai_missed``, ``ai_false_alarm`` over the studies read in
    [since, until), and the share in agreement. No patient data."""
    query = (
        select(AIStudy.model, AIStudy.task, ReadingStudy.agreement, func.count())
        .join(AIStudy, AIStudy.study_instance_uid == ReadingStudy.study_instance_uid)
        .where(ReadingStudy.agreement != "")
        .group_by(AIStudy.model, AIStudy.task, ReadingStudy.agreement)
    )
    if since is not None:
        query = query.where(ReadingStudy.agreement_at >= since)
    if until is not None:
        query = query.where(ReadingStudy.agreement_at < until)
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for model, task, agreement, count in session.execute(query):
        key = (model or "", task or "")
        entry = summary.setdefault(
            key,
            {"model": key[0], "task": key[1], **{a.value: 0 for a in Agreement}, "read": 0},
        )
        entry[agreement] = entry.get(agreement, 0) + count
        entry["read"] += count
    for entry in summary.values():
        entry["agreement_rate"] = round(entry[Agreement.AGREE.value] / entry["read"], 4)
    return sorted(summary.values(), key=lambda e: (e["task"], e["model"]))
