"""STOW-RS (PS3.18 10.5): store instances sent as ``multipart/related; type="application/dicom"``.

Parts are checked (``parse_part10``) and stored (``ArchiveService.store_instances``) in groups
of up to ``GROUP_PARTS`` parts or ``GROUP_BYTES`` bytes, as they arrive: a group's files are
fsync'ed side by side and its rows committed in one transaction, while the next group is
being received. Every instance is durable and indexed before the response is sent, as with one
store per instance, and a large upload needs memory for two groups at most. The response
lists every instance: stored ones in Referenced SOP Sequence with their RetrieveURL, refused
ones in Failed SOP Sequence with a Failure Reason code and, in Error Comment (0000,0902), the
reason in words. 200: all stored; 202: some refused; 409: none stored.

Each part is read once (``parse_part10``: one pass, bounded by the lengths it declares, that
stops at the first thing wrong). A request larger than ``stow_max_request_bytes`` is refused
with 413, before its body is read when its Content-Length says so; a part larger than
``stow_max_part_bytes`` is refused (0xA700) without being kept. When the client goes away,
the parts not yet stored are left alone: the group being stored stops before its next part.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from qamqor.core.audit import AuditAction
from qamqor.core.runtime import Runtime
from qamqor.http.deps import RuntimeDep
from qamqor.pacs.dicomweb.common import (
    ImagingUser,
    audit_read,
    base_url,
    dicom_json,
    fail,
    instance_url,
    study_url,
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
    ParsedInstance,
    parse_part10,
    read_file_meta,
)
from qamqor.pacs.service import ArchiveService, StoreOutcome, StoreResult

logger = logging.getLogger("qamqor.pacs.dicomweb")
router = APIRouter()

DICOM = "application/dicom"
# PS3.4 Annex B.2.3 / PS3.18 Table 10.5.3-2 failure reasons.
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0x0110
_MAX_WARNINGS = 20
#: A group of parts is stored (one fsync round, one transaction) at this many parts or bytes.
GROUP_PARTS = 32
GROUP_BYTES = 64 * 1024 * 1024


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


def _meta_uids(data: bytes) -> tuple[str, str]:
    """SOP Class and Instance UIDs from a part's file meta header, where they are UIDs."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return "", ""
    try:
        meta = read_file_meta(data, 132)
    except InvalidInstanceError:
        return "", ""
    return meta.sop_class_uid, meta.sop_instance_uid


def _check_part(
    part: ReceivedPart, study: str | None, max_part_bytes: int
) -> ParsedInstance | Outcome:
    """The part parsed and checked, or why it is refused."""
    if part.oversized:
        message = (
            f"the part has {part.size} bytes; this archive takes {max_part_bytes} at most "
            "(stow_max_part_bytes)"
        )
        logger.info("STOW part refused: %s", message)
        return Outcome("", "", reason=STATUS_OUT_OF_RESOURCES, message=message)
    data = part.body
    if part.content_type:
        media_type, _ = parse_media_type(part.content_type)
        if media_type != DICOM:
            return Outcome(
                *_meta_uids(data),
                reason=STATUS_CANNOT_UNDERSTAND,
                message=f"a part of type {media_type} is not {DICOM}",
            )
    try:
        parsed = parse_part10(data)
    except InvalidInstanceError as exc:
        outcome = Outcome(
            exc.sop_class_uid, exc.sop_instance_uid, reason=exc.dimse_status, message=exc.message
        )
        logger.info("STOW part refused (%s): %s", outcome.sop_instance_uid or "no UID", exc.message)
        return outcome
    except Exception as exc:  # a bug, not the part: still an answer, and the type only
        logger.error("STOW part unreadable: %s", type(exc).__name__)
        return Outcome(
            *_meta_uids(data),
            reason=STATUS_CANNOT_UNDERSTAND,
            message=f"the part cannot be read ({type(exc).__name__})",
        )
    own_study = parsed.study_instance_uid
    if study is not None and own_study != study:
        return Outcome(
            parsed.sop_class_uid,
            parsed.sop_instance_uid,
            reason=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            message=f"the instance belongs to study {own_study}, not to study {study} of the URL",
        )
    return parsed


def _outcome(parsed: ParsedInstance, result: StoreResult | Exception) -> Outcome:
    sop_class, sop_instance = parsed.sop_class_uid, parsed.sop_instance_uid
    if isinstance(result, StorageUnavailableError):
        return Outcome(
            sop_class, sop_instance, reason=STATUS_OUT_OF_RESOURCES, message=result.message
        )
    if isinstance(result, InvalidInstanceError):
        return Outcome(sop_class, sop_instance, reason=result.dimse_status, message=result.message)
    if isinstance(result, Exception):  # keep serving; the log names the instance and the type
        logger.error("STOW of %s failed: %s", sop_instance, type(result).__name__)
        return Outcome(
            sop_class,
            sop_instance,
            reason=STATUS_PROCESSING_FAILURE,
            message=f"the archive could not store it ({type(result).__name__})",
        )
    return Outcome(
        sop_class,
        sop_instance,
        study_instance_uid=result.ref.study_instance_uid,
        series_instance_uid=result.ref.series_instance_uid,
        already_present=result.outcome is StoreOutcome.ALREADY_PRESENT,
    )


#: The outcome of parts left alone because the client went away (nobody reads it).
_GONE = Outcome("", "", reason=STATUS_PROCESSING_FAILURE, message="the client went away")


def store_parts(
    archive: ArchiveService,
    parts: list[ReceivedPart],
    study: str | None,
    user: str,
    *,
    max_part_bytes: int,
    gone: threading.Event | None = None,
) -> list[Outcome]:
    """Check and store a group of parts; one outcome per part, in order. Never raises.

    Once ``gone`` is set (the client went away) no further part is read, and none is stored.
    """
    checked: list[ParsedInstance | Outcome] = []
    for part in parts:
        if gone is not None and gone.is_set():
            checked.append(_GONE)
            continue
        checked.append(_check_part(part, study, max_part_bytes))
    if gone is not None and gone.is_set():
        return [c if isinstance(c, Outcome) else _GONE for c in checked]
    parsed = [c for c in checked if isinstance(c, ParsedInstance)]
    try:
        results: list[StoreResult | Exception] = (
            archive.store_instances(parsed, source=f"stow:{user}") if parsed else []
        )
    except Exception as exc:  # the service answers per instance; this is a last resort
        results = [exc] * len(parsed)
    stored = iter(zip(parsed, results, strict=True))
    outcomes: list[Outcome] = []
    for item in checked:
        if isinstance(item, Outcome):
            outcomes.append(item)
        else:
            outcomes.append(_outcome(*next(stored)))
    return outcomes


def _element(vr: str, value: str | int) -> dict[str, Any]:
    # PS3.18 F.2: an empty value is an attribute without "Value".
    return {"vr": vr, "Value": [value]} if value != "" else {"vr": vr}


def _response_json(outcomes: list[Outcome], study: str | None, base: str) -> dict[str, Any]:
    """The STOW-RS response (PS3.18 Table 10.5.3-3) in the DICOM JSON model.

    Written as JSON directly: for a request of 500 instances, building a pydicom ``Dataset``
    and converting it took a quarter of a second.
    """
    response: dict[str, Any] = {}
    stored = [o for o in outcomes if o.reason is None]
    refused = [o for o in outcomes if o.reason is not None]
    studies = {o.study_instance_uid for o in stored}
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    if target:
        response["00081190"] = _element("UR", study_url(base, target))  # Retrieve URL
    if stored:
        response["00081199"] = {  # Referenced SOP Sequence
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _element("UI", o.sop_class_uid),
                    "00081155": _element("UI", o.sop_instance_uid),
                    "00081190": _element(
                        "UR",
                        instance_url(
                            base, o.study_instance_uid, o.series_instance_uid, o.sop_instance_uid
                        ),
                    ),
                }
                for o in stored
            ],
        }
    if refused:
        response["00081198"] = {  # Failed SOP Sequence
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _element("UI", o.sop_class_uid),
                    "00081155": _element("UI", o.sop_instance_uid),
                    "00081197": _element("US", cast(int, o.reason)),  # Failure Reason
                    # Error Comment: the reason in words (LO's 64 characters are too few).
                    "00000902": _element("LO", o.message),
                }
                for o in refused
            ],
        }
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
) -> Response:
    boundary = _check_content_type(request)
    settings = runtime.settings
    max_request, max_part = settings.stow_max_request_bytes, settings.stow_max_part_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_request:
        fail(413, _too_large(int(declared), max_request))
    try:
        parser = RelatedParser(boundary, max_part_bytes=max_part)
    except MultipartError as exc:
        fail(400, str(exc))
    outcomes: list[Outcome] = []
    problem: str | None = None
    too_large: str | None = None
    group: list[ReceivedPart] = []
    group_bytes = 0
    gone = threading.Event()
    # One group is stored (in a worker thread) while the next one is being received. Parsing
    # the next group during that store was tried: on 2 cores it only added GIL contention.
    storing: asyncio.Future[list[Outcome]] | None = None

    async def flush() -> None:
        """Start storing the group once the previous one is stored."""
        nonlocal storing, group, group_bytes
        if storing is not None:
            outcomes.extend(await storing)
            storing = None
        if group:
            storing = asyncio.ensure_future(
                run_in_threadpool(
                    store_parts,
                    runtime.get(ArchiveService),
                    group,
                    study,
                    user.username,
                    max_part_bytes=max_part,
                    gone=gone,
                )
            )
            group, group_bytes = [], 0

    watcher: asyncio.Task[None] | None = None
    try:
        try:
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_request:
                    too_large = _too_large(received, max_request, streamed=True)
                    group = []  # what came before the limit is not stored either
                    break
                for part in parser.feed(chunk):
                    group.append(part)
                    group_bytes += part.size
                    if len(group) >= GROUP_PARTS or group_bytes >= GROUP_BYTES:
                        await flush()
            if too_large is None:
                parser.close()
        except MultipartError as exc:
            problem = str(exc)
        # The body is read: from now on the only message left is the client's going away.
        watcher = asyncio.ensure_future(_wait_for_disconnect(request, gone))
        await flush()  # what was complete before a malformed rest is stored too
        await flush()
    except ClientDisconnect:
        gone.set()
        logger.info("STOW-RS client went away during the upload")
        return Response(status_code=400)
    finally:
        if storing is not None:  # stopped early: the group stops at its next part
            await asyncio.shield(storing)
        if watcher is not None:
            watcher.cancel()
    if gone.is_set():
        logger.info("STOW-RS client went away before the response")
        return Response(status_code=400)
    if too_large is not None:
        stored_before = sum(o.reason is None for o in outcomes)
        fail(
            413,
            too_large
            + (f"; {stored_before} instances before it were stored" if stored_before else ""),
        )
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
    body = _response_json(outcomes, study, base)

    def write_audit() -> None:
        with runtime.session_factory() as session:
            already = sum(o.already_present for o in stored)
            audit_read(
                session,
                user,
                action=AuditAction.STORE,
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


def _too_large(size: int, limit: int, *, streamed: bool = False) -> str:
    what = f"more than {limit} bytes came" if streamed else f"the request has {size} bytes"
    return (
        f"{what}; this archive takes {limit} at most per STOW-RS request (stow_max_request_bytes)"
    )


async def _wait_for_disconnect(request: Request, gone: threading.Event) -> None:
    """Set ``gone`` when the client disconnects (after the body: no other message comes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


@router.post("/studies", summary="STOW-RS: store instances")
async def store_instances(request: Request, runtime: RuntimeDep, user: ImagingUser) -> Response:
    return await _store(request, runtime, user, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def store_study_instances(
    study: str, request: Request, runtime: RuntimeDep, user: ImagingUser
) -> Response:
    return await _store(request, runtime, user, study)
