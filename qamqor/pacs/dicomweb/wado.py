"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data.

Everything is read through the archive service: the index says which files make up a study,
series or instance; the files are read back from storage. Whole studies stream out part by
part, so memory holds one instance at a time.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom import Dataset, dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID
from sqlalchemy import select

from qamqor.core.audit import AuditAction
from qamqor.core.numbers import DB_INT_MAX, whole_number
from qamqor.http.deps import DbSession, RuntimeDep
from qamqor.pacs.dicomweb import multipart
from qamqor.pacs.dicomweb.common import (
    BINARY_VRS,
    DICOM_JSON,
    ImagingUser,
    audit_read,
    base_url,
    fail,
    instance_url,
    not_found,
    to_json,
)
from qamqor.pacs.dicomweb.frames import (
    DICOM,
    OCTET_STREAM,
    choose_frame_encoding,
    choose_instance_syntax,
    native_frame,
    stored_frame,
)
from qamqor.pacs.dicomweb.multipart import Part
from qamqor.pacs.models import Series
from qamqor.pacs.render import number_of_frames
from qamqor.pacs.service import ArchiveService
from qamqor.pacs.transcode import TranscodeError, to_syntax

logger = logging.getLogger("qamqor.pacs.dicomweb")
_TAG = re.compile(r"[0-9A-Fa-f]{8}", re.ASCII)
router = APIRouter()

PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, PIXEL_DATA}
#: Binary values longer than this go out as a BulkDataURI instead of inline base64.
BULK_DATA_THRESHOLD = 1024


@dataclass(frozen=True)
class Located:
    """One archived instance, detached from the database session."""

    study: str
    series: str
    sop_instance_uid: str
    file_path: str
    transfer_syntax_uid: str
    is_image: bool


def locate(
    session: DbSession,
    archive: ArchiveService,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> list[Located]:
    """The instances of a study, series or instance, in order; 404 when there are none."""
    rows = archive.instances_of(
        session,
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=instance,
    )
    if not rows:
        if instance:
            not_found("instance", f"{instance} in series {series} of study {study}")
        if series:
            not_found("series", f"{series} in study {study}")
        not_found("study", study)
    if series:
        series_uids = {row.series_pk: series for row in rows}
    else:
        pks = {row.series_pk for row in rows}
        query = select(Series.id, Series.series_instance_uid).where(Series.id.in_(pks))
        series_uids = {pk: uid for pk, uid in session.execute(query)}
    return [
        Located(
            study=study,
            series=series_uids.get(row.series_pk, ""),
            sop_instance_uid=row.sop_instance_uid,
            file_path=row.file_path,
            transfer_syntax_uid=row.transfer_syntax_uid,
            is_image=row.rows is not None,
        )
        for row in rows
    ]


def read_dataset(archive: ArchiveService, item: Located) -> Dataset:
    """The whole stored instance as a dataset (pixel data still encoded)."""
    return dcmread(io.BytesIO(read_bytes(archive, item)))


def read_bytes(archive: ArchiveService, item: Located) -> bytes:
    try:
        return archive.storage.read(item.file_path)
    except OSError as exc:
        logger.error("reading %s failed: %s", item.sop_instance_uid, type(exc).__name__)
        fail(500, f"the stored file of instance {item.sop_instance_uid} cannot be read")


def transcode(data: bytes, syntax: str) -> bytes:
    """A stored Part 10 file re-encoded in ``syntax`` (decompressed where needed)."""
    try:
        dataset = to_syntax(dcmread(io.BytesIO(data)), syntax)
        buffer = io.BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True)
    except TranscodeError:
        raise
    except Exception as exc:
        raise TranscodeError(
            f"cannot write the instance as {UID(syntax).name} ({type(exc).__name__})"
        ) from None
    return buffer.getvalue()


def _accepted(request: Request) -> list[multipart.MediaRange]:
    return multipart.parse_accept(request.headers.get("accept"))


def _multipart_response(
    parts: Iterator[Part], part_type: str, *, status_code: int = 200
) -> StreamingResponse:
    boundary = multipart.new_boundary()
    return StreamingResponse(
        multipart.stream(parts, boundary),
        status_code=status_code,
        media_type=multipart.content_type(part_type, boundary),
    )


# Instances ----------------------------------------------------------------------------------
def _instance_part(archive: ArchiveService, item: Located, syntax: str) -> Part:
    data = read_bytes(archive, item)
    if syntax != item.transfer_syntax_uid:
        data = transcode(data, syntax)
    return Part(f"{DICOM}; transfer-syntax={syntax}", data)


def _retrieve(
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
    *,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    archive = runtime.get(ArchiveService)
    items = locate(session, archive, study, series, instance)
    accepted = _accepted(request)
    syntaxes = [choose_instance_syntax(accepted, item.transfer_syntax_uid) for item in items]
    refused = [item for item, syntax in zip(items, syntaxes, strict=True) if syntax is None]
    if refused:
        stored = sorted({item.transfer_syntax_uid for item in refused})
        fail(
            406,
            f"{len(refused)} instance(s) are stored as {', '.join(stored)}, which the Accept "
            "header does not allow; ask for transfer-syntax=* or for Explicit VR Little Endian",
        )
    object_type = "instance" if instance else "series" if series else "study"
    audit_read(
        session,
        user,
        action=AuditAction.RETRIEVE,
        object_type=object_type,
        object_id=instance or series or study,
        request=request,
        detail=f"instances={len(items)}",
    )
    plan = [(item, str(syntax)) for item, syntax in zip(items, syntaxes, strict=True)]
    # The first part is made before the response starts, so a failure still gets a status.
    try:
        first = _instance_part(archive, *plan[0])
    except TranscodeError as exc:
        fail(406, f"{exc.message}; ask for transfer-syntax=* to get it as stored")

    def parts() -> Iterator[Part]:
        yield first
        for item, syntax in plan[1:]:
            try:
                yield _instance_part(archive, item, syntax)
            except Exception as exc:  # the response has started: leave the part out, log why
                logger.warning(
                    "instance %s left out of a retrieve: %s",
                    item.sop_instance_uid,
                    type(exc).__name__,
                )

    return _multipart_response(parts(), DICOM)


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(
    study: str, request: Request, session: DbSession, runtime: RuntimeDep, user: ImagingUser
) -> Response:
    return _retrieve(request, session, runtime, user, study=study)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(
    study: str,
    series: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    return _retrieve(request, session, runtime, user, study=study, series=series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="WADO-RS: retrieve an instance",
)
def retrieve_instance(
    study: str,
    series: str,
    instance: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    return _retrieve(request, session, runtime, user, study=study, series=series, instance=instance)


# Metadata -----------------------------------------------------------------------------------
def _peek_pixel_element(fp: Any, little_endian: bool, implicit: bool) -> tuple[int, str] | None:
    """The tag and VR of the pixel data element the reader stopped at, if any."""
    head = fp.read(8)
    if len(head) < 8:
        return None
    order: Literal["little", "big"] = "little" if little_endian else "big"
    tag = (int.from_bytes(head[0:2], order) << 16) | int.from_bytes(head[2:4], order)
    if tag not in _PIXEL_TAGS:
        return None
    vr = "" if implicit else head[4:6].decode("ascii", "replace")
    return tag, vr


# Where an instance's own URL goes in a cached metadata document (URLs depend on the request).
_URL_PLACEHOLDER = "urn:qamqor:instance-url"


def instance_metadata_text(archive: ArchiveService, item: Located, base: str) -> str:
    """DICOM JSON text of one instance, from a cache kept beside the stored file.

    Building it costs ~10 ms (pydicom's per-element conversion); a viewer opening a series asks
    for all of its instances at once. Instances never change, so the first answer is kept as
    ``<file>.json`` (written atomically; an unreadable cache is simply rebuilt).
    """
    url = instance_url(base, item.study, item.series, item.sop_instance_uid)
    cache = archive.storage.absolute_path(item.file_path + ".json")
    try:
        template = cache.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        template = json.dumps(
            instance_metadata(archive, item, _URL_PLACEHOLDER, url=_URL_PLACEHOLDER),
            ensure_ascii=False,
        )
        scratch = cache.with_name(f".{cache.name}.{uuid.uuid4().hex}")
        try:
            scratch.write_text(template, encoding="utf-8")
            os.replace(scratch, cache)
        except OSError as exc:  # a read-only archive still answers, uncached
            scratch.unlink(missing_ok=True)
            logger.warning("metadata cache not written: %s", type(exc).__name__)
    return template.replace(_URL_PLACEHOLDER, url)


def instance_metadata(
    archive: ArchiveService, item: Located, base: str, *, url: str | None = None
) -> dict[str, Any]:
    """DICOM JSON of one instance with bulk data (pixel data above all) as BulkDataURIs."""
    if url is None:
        url = instance_url(base, item.study, item.series, item.sop_instance_uid)
    path = archive.storage.absolute_path(item.file_path)
    with open(path, "rb") as fp:
        dataset = dcmread(fp, stop_before_pixels=True)
        syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
        pixel = _peek_pixel_element(fp, syntax.is_little_endian, syntax.is_implicit_VR)
    dataset.AvailableTransferSyntaxUID = item.transfer_syntax_uid
    result = to_json(
        dataset,
        bulk_data_uri=lambda tag: f"{url}/bulkdata/{tag:08X}",
        bulk_data_threshold=BULK_DATA_THRESHOLD,
    )
    if pixel is not None:
        tag, vr = pixel
        if vr not in BINARY_VRS:
            bits = int(dataset.get("BitsAllocated") or 8)
            vr = "OB" if syntax.is_encapsulated or bits <= 8 else "OW"
        result[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/{tag:08X}"}
    return result


def _metadata(
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
    *,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    archive = runtime.get(ArchiveService)
    items = locate(session, archive, study, series, instance)
    audit_read(
        session,
        user,
        action=AuditAction.RETRIEVE_METADATA,
        object_type="instance" if instance else "series" if series else "study",
        object_id=instance or series or study,
        request=request,
        detail=f"instances={len(items)}",
    )
    base = base_url(request)

    def body() -> Iterator[bytes]:
        yield b"["
        first = True
        for item in items:
            try:
                text = instance_metadata_text(archive, item, base)
            except Exception as exc:
                logger.warning(
                    "metadata of %s left out: %s", item.sop_instance_uid, type(exc).__name__
                )
                continue
            yield (b"" if first else b",") + text.encode("utf-8")
            first = False
        yield b"]"

    return StreamingResponse(body(), media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata", summary="WADO-RS: metadata of a study")
def study_metadata(
    study: str, request: Request, session: DbSession, runtime: RuntimeDep, user: ImagingUser
) -> Response:
    return _metadata(request, session, runtime, user, study=study)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: metadata of a series")
def series_metadata(
    study: str,
    series: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    return _metadata(request, session, runtime, user, study=study, series=series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="WADO-RS: metadata of an instance",
)
def instance_metadata_route(
    study: str,
    series: str,
    instance: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    return _metadata(request, session, runtime, user, study=study, series=series, instance=instance)


# Frames and bulk data -----------------------------------------------------------------------
def parse_frame_list(text: str) -> list[int]:
    """``"1,3,5"`` -> ``[1, 3, 5]`` (1-based frame numbers); 400 on anything else."""
    numbers: list[int] = []
    for piece in text.split(","):
        try:
            numbers.append(
                whole_number(piece.strip(), name="a frame", minimum=1, maximum=DB_INT_MAX)
            )
        except ValueError:
            fail(400, f"frame numbers are positive whole numbers separated by commas, not {text!r}")
    return numbers


def _frames_response(
    request: Request, dataset: Dataset, item: Located, numbers: list[int]
) -> Response:
    if "PixelData" not in dataset:
        fail(404, f"instance {item.sop_instance_uid} has no pixel data, so no frames")
    count = number_of_frames(dataset)
    missing = [n for n in numbers if n > count]
    if missing:
        fail(
            404, f"frame {missing[0]} does not exist; instance {item.sop_instance_uid} has {count}"
        )
    choice = choose_frame_encoding(_accepted(request), item.transfer_syntax_uid)
    if choice is None:
        fail(
            406,
            f"frames of instance {item.sop_instance_uid} are stored as "
            f"{item.transfer_syntax_uid}; ask for application/octet-stream (uncompressed) or "
            "for that transfer syntax",
        )
    extract = stored_frame if choice.stored else native_frame

    def part(number: int) -> Part:
        return Part(choice.part_type, extract(dataset, number - 1))

    try:
        first = part(numbers[0])
    except TranscodeError as exc:
        fail(406, f"{exc.message}; ask for transfer-syntax=* to get the frames as stored")

    def parts() -> Iterator[Part]:
        yield first
        for number in numbers[1:]:
            try:
                yield part(number)
            except TranscodeError:
                logger.warning("frame %d of %s left out", number, item.sop_instance_uid)

    return _multipart_response(parts(), choice.media_type)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    summary="WADO-RS: frames of an instance",
)
def retrieve_frames(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    numbers = parse_frame_list(frames)
    (item,) = locate(session, runtime.get(ArchiveService), study, series, instance)
    audit_read(
        session,
        user,
        action=AuditAction.RETRIEVE_FRAMES,
        object_type="instance",
        object_id=instance,
        request=request,
        detail=f"frames={frames}",
    )
    return _frames_response(request, read_dataset(runtime.get(ArchiveService), item), item, numbers)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
    summary="WADO-RS: a bulk data element of an instance",
)
def retrieve_bulkdata(
    study: str,
    series: str,
    instance: str,
    tag: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    if not _TAG.fullmatch(tag):
        fail(400, f"a bulk data tag is 8 hexadecimal digits, not {tag!r}")
    number = int(tag, 16)
    (item,) = locate(session, runtime.get(ArchiveService), study, series, instance)
    audit_read(
        session,
        user,
        action=AuditAction.RETRIEVE_BULKDATA,
        object_type="instance",
        object_id=instance,
        request=request,
        detail=f"tag={number:08X}",
    )
    dataset = read_dataset(runtime.get(ArchiveService), item)
    if number == PIXEL_DATA and "PixelData" in dataset:
        return _frames_response(
            request, dataset, item, list(range(1, number_of_frames(dataset) + 1))
        )
    element = dataset.get(number)
    if element is None or element.VR not in BINARY_VRS or element.value is None:
        fail(404, f"instance {instance} has no bulk data element {number:08X}")
    payload = bytes(element.value)
    return _multipart_response(iter([Part(OCTET_STREAM, payload)]), OCTET_STREAM)
