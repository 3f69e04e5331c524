"""The reading service: claims, urgency, the viewer's data, reports (draft, sign, amend).

Services take keyword-only sessions and never import FastAPI. The functions a page calls for a
change (:func:`open_worklist`, :func:`claim_study`, :func:`open_study`, :func:`save_report`...)
are one transaction each, audit included, and commit; the smaller steps they are made of
(:func:`claim`, :func:`save_draft`...) leave committing to their caller. Signing stores the SR
and the PDF in the archive (like any DICOM sender, under UIDs derived from the study and
version, so a retried signature stores nothing twice) before the report row is marked signed
in one transaction: a failure leaves the draft as it was.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from pydicom import Dataset, dcmread
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from qamqor.ai import ImageResult, Priority, StudyResult, Task, priority_of, study_result
from qamqor.ai import study_results as ai_study_results
from qamqor.core import audit
from qamqor.core.audit import AuditAction
from qamqor.core.db import begin_write, utcnow
from qamqor.core.events import EventBus
from qamqor.core.models import User
from qamqor.pacs import (
    ArchiveService,
    PatientStudy,
    parse_part10,
    patient_studies,
    study_instances,
    study_of,
)
from qamqor.reading import documents, worklist
from qamqor.reading.changes import CHANGES
from qamqor.reading.enums import Agreement, ReadingStatus, ReportStatus, Template, Urgency
from qamqor.reading.errors import (
    InvalidReportError,
    ReadingError,
    ReportNotFoundError,
    ReportSignedError,
    StudyClaimedError,
    StudyNotFoundError,
)
from qamqor.reading.events import CLAIM_CHANGED, REPORT_SIGNED
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
    """Who acts (from the web layer's principal), and from where (for the audit trail)."""

    id: int
    username: str
    full_name: str = ""
    source: str = ""


def actor(session: Session, *, user_id: int, username: str, source: str = "") -> Actor:
    """The signed-in user as an actor, with the full name their reports are signed with."""
    full_name = session.scalar(select(User.full_name).where(User.id == user_id)) or ""
    return Actor(user_id, username, full_name, source)


def _audit(
    session: Session, action: AuditAction, by: Actor, study_uids: list[str], detail: str = ""
) -> None:
    audit.record(
        session,
        action,
        actor=by.username,
        object_type="study",
        object_id=study_uids,
        source=by.source,
        detail=detail,
    )


def _publish(events: EventBus | None, name: str, **payload: Any) -> None:
    if events is not None:
        events.publish(name, **payload)


# Study state ---------------------------------------------------------------------------------
def _study(session: Session, study_instance_uid: str) -> PatientStudy:
    study = study_of(session, study_instance_uid)
    if study is None:
        raise StudyNotFoundError(f"no study {study_instance_uid} in the archive")
    return study


def reading_row(session: Session, study_instance_uid: str, *, lock: bool = False) -> ReadingStudy:
    """The study's reading row, created if absent (safe against a concurrent creation)."""
    study = _study(session, study_instance_uid)
    query = select(ReadingStudy).where(ReadingStudy.study_pk == study.pk)
    if lock:
        query = query.with_for_update()
    row = session.scalar(query)
    if row is not None:
        return row
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(ReadingStudy)
        .values(
            study_pk=study.pk,
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
    ai: StudyResult | None
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
    rows = study_instances(session, study_instance_uid)
    ai = study_result(session, study_instance_uid)
    ai_images: dict[str, ImageResult] = {}
    if ai is not None:
        for analysed in ai.images:
            ai_images[analysed.sop_instance_uid] = analysed
    overlays = {
        i.overlay_sop_instance_uid for i in ai_images.values() if i.overlay_sop_instance_uid
    }
    series_views: dict[int, SeriesView] = {}
    modalities: set[str] = set()
    series_of_instance = {i.sop_instance_uid: i.series_instance_uid for i in rows}
    for instance in rows:
        if instance.sop_class_uid in DERIVED_SOP_CLASSES or instance.sop_instance_uid in overlays:
            continue
        if not instance.rows:
            continue
        view = series_views.get(instance.series_pk)
        if view is None:
            view = series_views[instance.series_pk] = SeriesView(
                instance.series_instance_uid,
                instance.series_number,
                instance.modality,
                instance.series_description,
                [],
            )
        modalities.add(instance.modality)
        ai_image = ai_images.get(instance.sop_instance_uid)
        image = ImageView(
            sop_instance_uid=instance.sop_instance_uid,
            series_instance_uid=instance.series_instance_uid,
            rows=instance.rows,
            columns=instance.columns,
            frames=instance.number_of_frames or 1,
            view=(ai_image.view if ai_image and ai_image.view else instance.view_position) or "",
            laterality=(
                (ai_image.laterality if ai_image and ai_image.laterality else "")
                or instance.image_laterality
                or instance.series_laterality
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
    is_mammo = "MG" in modalities or (ai is not None and ai.task == Task.MAMMO)
    if not is_mammo and any(image.hanging_key for v in series_views.values() for image in v.images):
        is_mammo = True
    return StudyView(
        study_instance_uid=study.study_instance_uid,
        patient_pk=study.patient_pk,
        patient_name=study.patient_name,
        patient_id=study.patient_id,
        patient_sex=study.patient_sex,
        birth_date=study.patient_birth_date,
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
    found = patient_studies(session, view.patient_pk, excluding=view.study_instance_uid, limit=20)
    return [
        PriorStudy(
            r.study_instance_uid,
            r.study_date,
            r.study_description,
            r.modalities_in_study.replace("\\", ", "),
        )
        for r in found
    ]


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
    if latest is not None and latest.status == ReportStatus.DRAFT:
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
    if reading.status != ReadingStatus.REPORTED:
        reading.status = ReadingStatus.IN_PROGRESS.value
    reading.updated_at = now
    session.flush()
    return report


def ai_priority_of(session: Session, study_instance_uid: str) -> str:
    """The study's AI priority ("" while pending)."""
    return priority_of(session, study_instance_uid)


def suggested_agreement(content: ReportContent, ai_priority: str) -> Agreement | None:
    """The radiologist against the AI: flagged means priority ``high`` (the model's default
    operating point). None when the AI did not analyse the study."""
    if ai_priority not in (Priority.HIGH, Priority.MEDIUM, Priority.LOW):
        return None
    flagged = ai_priority == Priority.HIGH
    if content.suspicious == flagged:
        return Agreement.AGREE
    return Agreement.AI_MISSED if content.suspicious else Agreement.AI_FALSE_ALARM


def _evidence(archive: ArchiveService, session: Session, study_instance_uid: str) -> Dataset:
    """A header of one of the study's own images (patient and study attributes for the SR)."""
    for instance in study_instances(session, study_instance_uid):
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
    events: EventBus | None = None,
    zone: tzinfo = UTC,
) -> Report:
    """Sign the open draft: SR and PDF into the archive, then the rows, in one transaction.

    Commits, then announces :data:`~qamqor.reading.events.REPORT_SIGNED` on ``events``.
    Raises ``InvalidReportError`` (what is missing) or ``ReportSignedError``.
    """
    draft = session.scalar(
        select(Report)
        .where(Report.study_instance_uid == study_instance_uid)
        .order_by(Report.version.desc())
        .limit(1)
    )
    if draft is None:
        raise ReportNotFoundError("there is no report to sign; fill in the form first")
    if draft.status != ReportStatus.DRAFT:
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
        zone,
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
    for result in archive.store_instances(
        parsed, source=f"reading:{actor.username}"[:64], derived=True
    ):
        if isinstance(result, Exception):
            raise result
    # The archive has both; now the rows, all or nothing.
    begin_write(session)
    reading = reading_row(session, study_instance_uid, lock=True)
    draft = session.get(Report, draft.id, with_for_update=True)
    assert draft is not None
    if draft.status != ReportStatus.DRAFT:
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
    _publish(events, REPORT_SIGNED, study_instance_uid=study_instance_uid, version=draft.version)
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
    ai = ai_study_results()
    query = (
        select(ai.c.model, ai.c.task, ReadingStudy.agreement, func.count())
        .join(ai, ai.c.study_instance_uid == ReadingStudy.study_instance_uid)
        .where(ReadingStudy.agreement != "")
        .group_by(ai.c.model, ai.c.task, ReadingStudy.agreement)
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


# What the pages do: one transaction each, audited, committed ------------------------------------
def open_worklist(
    session: Session,
    filters: worklist.WorklistFilter,
    *,
    by: Actor,
    now: datetime,
    page: int = 1,
    size: int = 50,
) -> worklist.WorklistPage:
    """One page of the worklist, with the facilities for the filter; every study listed is in
    the audit trail. Commits."""
    result = worklist.query_worklist(session, filters, now=now, page=page, size=size)
    result.facilities = worklist.facilities(session)
    result.modalities = worklist.modalities(session)
    begin_write(session)
    _audit(
        session,
        AuditAction.VIEW,
        by,
        [row.study_instance_uid for row in result.rows],
        "reading worklist",
    )
    session.commit()
    return result


def _holds(session: Session, study_instance_uid: str, by: Actor) -> bool:
    """Whether ``by`` holds a live claim on the study already (locks its reading row)."""
    row = reading_row(session, study_instance_uid, lock=True)
    return claim_is_live(row, utcnow()) and row.claimed_by_id == by.id


def claim_study(
    session: Session,
    *,
    study_instance_uid: str,
    by: Actor,
    minutes: int,
    take_over: bool = False,
    events: EventBus | None = None,
) -> bool:
    """Claim the study for ``by`` (``take_over``: even from another radiologist). False, and
    nothing changed, while another's claim is live. Commits; announces ``CLAIM_CHANGED``."""
    begin_write(session)
    held = _holds(session, study_instance_uid, by)
    try:
        claim(
            session,
            study_instance_uid=study_instance_uid,
            actor=by,
            minutes=minutes,
            force=take_over,
        )
    except StudyClaimedError:
        session.rollback()
        return False
    _audit(session, AuditAction.CLAIM, by, [study_instance_uid], "taken over" if take_over else "")
    session.commit()
    if not held:
        _publish(
            events, CLAIM_CHANGED, study_instance_uid=study_instance_uid, claimed_by=by.username
        )
    return True


def release_study(
    session: Session, *, study_instance_uid: str, by: Actor, events: EventBus | None = None
) -> None:
    """Give up ``by``'s claim (someone else's is left alone). Commits; announces
    ``CLAIM_CHANGED`` when there was one to give up."""
    begin_write(session)
    held = _holds(session, study_instance_uid, by)
    release(session, study_instance_uid=study_instance_uid, actor=by)
    _audit(session, AuditAction.RELEASE, by, [study_instance_uid])
    session.commit()
    if held:
        _publish(events, CLAIM_CHANGED, study_instance_uid=study_instance_uid, claimed_by="")


def change_urgency(
    session: Session, *, study_instance_uid: str, urgency: Urgency, by: Actor
) -> None:
    """Set the study's clinical urgency. Commits."""
    begin_write(session)
    set_urgency(session, study_instance_uid=study_instance_uid, urgency=urgency)
    _audit(session, AuditAction.SET_URGENCY, by, [study_instance_uid], str(int(urgency)))
    session.commit()


def renew_claim(
    session: Session, *, study_instance_uid: str, by: Actor, minutes: int
) -> datetime | None:
    """Renew ``by``'s claim while they work; when it now expires. ``StudyClaimedError`` when
    someone else has the study. Commits."""
    begin_write(session)
    try:
        row = claim(session, study_instance_uid=study_instance_uid, actor=by, minutes=minutes)
    except ReadingError:
        session.rollback()
        raise
    expires = row.claim_expires_at
    session.commit()
    return expires


def open_study(
    session: Session,
    *,
    study_instance_uid: str,
    by: Actor,
    minutes: int,
    events: EventBus | None = None,
) -> None:
    """``by`` opens the study in the viewer: claimed for them unless someone else reads it
    (the page shows who). Audited; commits; announces ``CLAIM_CHANGED`` for a new claim.
    ``StudyNotFoundError`` and other reading errors roll back."""
    begin_write(session)
    try:
        held = _holds(session, study_instance_uid, by)
        claim(session, study_instance_uid=study_instance_uid, actor=by, minutes=minutes)
        claimed = not held
    except StudyClaimedError:
        claimed = False  # shown on the page: someone else reads it
    except ReadingError:
        session.rollback()
        raise
    _audit(session, AuditAction.OPEN, by, [study_instance_uid], "reading viewer")
    session.commit()
    if claimed:
        _publish(
            events, CLAIM_CHANGED, study_instance_uid=study_instance_uid, claimed_by=by.username
        )


def prior_view(session: Session, *, study_instance_uid: str, by: Actor) -> StudyView:
    """A study opened beside the current one (a prior): its images, audited. Commits."""
    view = study_view(session, study_instance_uid)
    begin_write(session)
    _audit(session, AuditAction.OPEN, by, [study_instance_uid], "reading viewer (prior)")
    session.commit()
    return view


def save_report(
    session: Session,
    *,
    archive: ArchiveService,
    study_instance_uid: str,
    by: Actor,
    content: ReportContent,
    language: str,
    amendment_reason: str = "",
    sign_it: bool = False,
    agreement: Agreement | None = None,
    events: EventBus | None = None,
    zone: tzinfo = UTC,
) -> Report:
    """Save the draft (committed, audited), and with ``sign_it`` sign it (:func:`sign`; the
    agreement with the AI is suggested when not given). A failure rolls back what was not
    committed and raises (the saved draft stays)."""
    try:
        begin_write(session)
        report = save_draft(
            session,
            study_instance_uid=study_instance_uid,
            actor=by,
            content=content,
            language=language,
            amendment_reason=amendment_reason,
        )
        _audit(
            session, AuditAction.REPORT_DRAFT, by, [study_instance_uid], f"version {report.version}"
        )
        session.commit()
        if not sign_it:
            return report
        if agreement is None:
            agreement = suggested_agreement(content, ai_priority_of(session, study_instance_uid))
        signed = sign(
            session,
            archive=archive,
            study_instance_uid=study_instance_uid,
            actor=by,
            agreement=agreement,
            events=events,
            zone=zone,
        )
        begin_write(session)
        _audit(
            session,
            AuditAction.REPORT_SIGN,
            by,
            [study_instance_uid],
            f"version {signed.version}, SR {signed.sr_sop_instance_uid}",
        )
        session.commit()
        return signed
    except Exception:
        session.rollback()
        raise


def amend_report(
    session: Session, *, study_instance_uid: str, by: Actor, reason: str, language: str
) -> Report | None:
    """Open a new version of the signed report (the signed one is kept); None when the latest
    version is not signed. Audited; commits."""
    reports = reports_of(session, study_instance_uid)
    if not reports or reports[0].status != ReportStatus.SIGNED:
        return None
    content = content_of(reports[0])
    begin_write(session)
    report = save_draft(
        session,
        study_instance_uid=study_instance_uid,
        actor=by,
        content=content,
        language=language,
        amendment_reason=reason,
    )
    _audit(session, AuditAction.REPORT_AMEND, by, [study_instance_uid], f"version {report.version}")
    session.commit()
    return report


def signed_report_pdf(
    session: Session, *, archive: ArchiveService, report_id: int, by: Actor
) -> tuple[Report, bytes] | None:
    """A signed report and its PDF (None: no signed report with this number). Audited;
    commits."""
    report = session.get(Report, report_id)
    if report is None or not report.pdf_sop_instance_uid:
        return None
    data = report_pdf(archive, report)
    begin_write(session)
    _audit(session, AuditAction.REPORT_PDF, by, [report.study_instance_uid], f"report {report.id}")
    session.commit()
    return report, data


def worklist_changes() -> str:
    """This process's worklist change token (:mod:`qamqor.reading.changes`)."""
    return CHANGES.token()
