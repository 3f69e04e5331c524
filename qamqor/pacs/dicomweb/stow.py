"""STOW-RS (PS3.18 10.5): store instances sent as ``multipart/related; type="application/dicom"``.

Each part is checked (``parse_part10``) and stored (``ArchiveService.store_instance``) as soon
as it has arrived, so a large upload needs memory for one instance at a time. The response
lists every instance: stored ones in Referenced SOP Sequence with their RetrieveURL, refused
ones in Failed SOP Sequence with a Failure Reason code and, in Error Comment (0000,0902), the
reason in words. 200: all stored; 202: some refused; 409: none stored.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydicom import Dataset, config, dcmread
from pydicom.dataelem import DataElement
from starlette.concurrency import run_in_threadpool

from qamqor.pacs.dicomweb.common import (
    ImagingUser,
    audit_read,
    base_url,
    dicom_json,
    fail,
    instance_url,
    study_url,
    to_json,
    warning_header,
)
from qamqor.pacs.dicomweb.multipart import (
    MultipartError,
    ReceivedPart,
    RelatedParser,
    parse_media_type,
)
from qamqor.pacs.errors import InvalidInstanceError, StorageUnavailableError
from qamqor.pacs.parsing import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    parse_part10,
)
from qamqor.pacs.service import ArchiveService, StoreOutcome
from qamqor.runtime import Runtime
from qamqor.web.deps import RuntimeDep

logger = logging.getLogger("qamqor.pacs.dicomweb")
router = APIRouter()

DICOM = "application/dicom"
# PS3.4 Annex B.2.3 / PS3.18 Table 10.5.3-2 failure reasons.
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0x0110
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_MAX_WARNINGS = 20


@dataclass(frozen=True)
class Outcome:
    """What became of one part: stored (``reason`` None) or refused, with why."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    reason: int | None = None
    message: str = ""
    already_present: bool = False


def _uids_of(data: bytes) -> tuple[str, str]:
    """SOP Class and Instance UIDs of a refused part, if they can be read and look like UIDs."""
    try:
        dataset = dcmread(
            io.BytesIO(data),
            force=True,
            stop_before_pixels=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
        found = (str(dataset.get("SOPClassUID", "")), str(dataset.get("SOPInstanceUID", "")))
    except Exception:
        return "", ""
    return tuple(u.strip() if _UID.match(u.strip()) and len(u.strip()) <= 64 else "" for u in found)  # type: ignore[return-value]


def _refused(data: bytes, reason: int, message: str) -> Outcome:
    sop_class, sop_instance = _uids_of(data)
    return Outcome(sop_class, sop_instance, reason=reason, message=message)


def store_part(
    archive: ArchiveService, part: ReceivedPart, study: str | None, user: str
) -> Outcome:
    """Check and store one part; never raises (a refusal is an ``Outcome``)."""
    data = bytes(part.body)
    if part.content_type:
        media_type, _ = parse_media_type(part.content_type)
        if media_type != DICOM:
            return _refused(
                data, STATUS_CANNOT_UNDERSTAND, f"a part of type {media_type} is not {DICOM}"
            )
    try:
        parsed = parse_part10(data)
    except InvalidInstanceError as exc:
        outcome = _refused(data, exc.dimse_status, exc.message)
        logger.info("STOW part refused (%s): %s", outcome.sop_instance_uid or "no UID", exc.message)
        return outcome
    ds = parsed.dataset
    sop_class, sop_instance = str(ds.SOPClassUID).strip(), str(ds.SOPInstanceUID).strip()
    own_study = str(ds.StudyInstanceUID).strip()
    if study is not None and own_study != study:
        return Outcome(
            sop_class,
            sop_instance,
            reason=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            message=f"the instance belongs to study {own_study}, not to study {study} of the URL",
        )
    try:
        result = archive.store_instance(parsed, source=f"stow:{user}")
    except StorageUnavailableError as exc:
        return Outcome(sop_class, sop_instance, reason=STATUS_OUT_OF_RESOURCES, message=exc.message)
    except InvalidInstanceError as exc:
        return Outcome(sop_class, sop_instance, reason=exc.dimse_status, message=exc.message)
    except Exception as exc:  # keep serving; the log names the instance and the error type
        logger.error("STOW of %s failed: %s", sop_instance, type(exc).__name__)
        return Outcome(
            sop_class,
            sop_instance,
            reason=STATUS_PROCESSING_FAILURE,
            message=f"the archive could not store it ({type(exc).__name__})",
        )
    return Outcome(
        sop_class,
        sop_instance,
        study_instance_uid=result.ref.study_instance_uid,
        series_instance_uid=result.ref.series_instance_uid,
        already_present=result.outcome is StoreOutcome.ALREADY_PRESENT,
    )


def _response_dataset(outcomes: list[Outcome], study: str | None, base: str) -> Dataset:
    response = Dataset()
    stored = [o for o in outcomes if o.reason is None]
    refused = [o for o in outcomes if o.reason is not None]
    studies = {o.study_instance_uid for o in stored}
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    if target:
        response.RetrieveURL = study_url(base, target)
    if stored:
        items = []
        for outcome in stored:
            item = Dataset()
            item.ReferencedSOPClassUID = outcome.sop_class_uid
            item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
            item.RetrieveURL = instance_url(
                base,
                outcome.study_instance_uid,
                outcome.series_instance_uid,
                outcome.sop_instance_uid,
            )
            items.append(item)
        response.ReferencedSOPSequence = items
    if refused:
        items = []
        for outcome in refused:
            item = Dataset()
            item.ReferencedSOPClassUID = outcome.sop_class_uid
            item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
            item.FailureReason = outcome.reason
            # Error Comment: the reason in words (LO's 64 characters are too few for some).
            item.add(DataElement(0x00000902, "LO", outcome.message, validation_mode=config.IGNORE))
            items.append(item)
        response.FailedSOPSequence = items
    return response


def _check_content_type(request: Request) -> str:
    media_type, params = parse_media_type(request.headers.get("content-type", ""))
    if media_type != "multipart/related":
        fail(415, f'STOW-RS takes multipart/related; type="{DICOM}", not {media_type or "nothing"}')
    part_type = params.get("type", DICOM).lower()
    if part_type != DICOM:
        fail(415, f"this archive stores {DICOM} parts, not {part_type}")
    boundary = params.get("boundary", "")
    if not boundary:
        fail(400, "the Content-Type has no boundary parameter")
    return boundary


async def _store(
    request: Request, runtime: Runtime, user: ImagingUser, study: str | None
) -> JSONResponse:
    boundary = _check_content_type(request)
    try:
        parser = RelatedParser(boundary)
    except MultipartError as exc:
        fail(400, str(exc))
    outcomes: list[Outcome] = []
    problem: str | None = None
    try:
        async for chunk in request.stream():
            for part in parser.feed(chunk):
                outcomes.append(
                    await run_in_threadpool(store_part, runtime.archive, part, study, user.username)
                )
        parser.close()
    except MultipartError as exc:
        problem = str(exc)
    if problem is not None:
        if not outcomes:
            fail(400, problem)
        outcomes.append(Outcome("", "", reason=STATUS_CANNOT_UNDERSTAND, message=problem))
    if not outcomes:
        fail(400, "the request holds no DICOM parts")

    stored = [o for o in outcomes if o.reason is None]
    refused = [o for o in outcomes if o.reason is not None]
    status = 200 if not refused else 202 if stored else 409
    base = base_url(request)
    body = to_json(_response_dataset(outcomes, study, base))

    def write_audit() -> None:
        with runtime.session_factory() as session:
            already = sum(o.already_present for o in stored)
            audit_read(
                session,
                user,
                action="store",
                object_type="study",
                object_id=study or "",
                request=request,
                detail=(
                    f"stored={len(stored) - already}; already_present={already}; "
                    f"refused={len(refused)}; sop={' '.join(o.sop_instance_uid for o in stored)}"
                ),
            )

    await run_in_threadpool(write_audit)
    headers = None
    if refused:
        warnings = [
            warning_header(f"{o.sop_instance_uid or 'part'}: {o.message}")
            for o in refused[:_MAX_WARNINGS]
        ]
        headers = {"Warning": ", ".join(warnings)}
    return dicom_json(body, status_code=status, headers=headers)


@router.post("/studies", summary="STOW-RS: store instances")
async def store_instances(request: Request, runtime: RuntimeDep, user: ImagingUser) -> JSONResponse:
    return await _store(request, runtime, user, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def store_study_instances(
    study: str, request: Request, runtime: RuntimeDep, user: ImagingUser
) -> JSONResponse:
    return await _store(request, runtime, user, study)
