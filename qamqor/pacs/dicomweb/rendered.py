"""WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.3 and 10.7): JPEG or PNG.

Query parameters (PS3.18 8.3.5.1): ``window=center,width[,linear|linear-exact|sigmoid]``,
``viewport=vw,vh[,sx,sy,sw,sh]``, ``quality=1..100``; ``annotation``, ``charset`` and
``iccprofile`` are accepted and ignored.
"""

from __future__ import annotations

import math
import re

from fastapi import APIRouter, Request
from fastapi.responses import Response

from qamqor.core.audit import AuditAction
from qamqor.core.numbers import whole_number
from qamqor.http.deps import DbSession, RuntimeDep, get_runtime
from qamqor.http.errors import status_for
from qamqor.pacs import render
from qamqor.pacs.dicomweb import multipart
from qamqor.pacs.dicomweb.common import ImagingUser, audit_read, fail
from qamqor.pacs.dicomweb.wado import Located, locate, parse_frame_list, read_dataset
from qamqor.pacs.render_cache import RenderCache
from qamqor.pacs.service import ArchiveService

router = APIRouter()

DEFAULT_MEDIA_TYPE = "image/jpeg"
THUMBNAIL_SIZE = 128
_FUNCTIONS = {
    "linear": render.VoiFunction.LINEAR,
    "linear-exact": render.VoiFunction.LINEAR_EXACT,
    "linear_exact": render.VoiFunction.LINEAR_EXACT,
    "sigmoid": render.VoiFunction.SIGMOID,
}


#: A decimal number in ASCII (``float()`` also takes "٣", "inf", "nan" and "1_0").
_DECIMAL = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?", re.ASCII)
#: The largest side of a rendered image, in pixels (a viewport bigger than the image
#: enlarges it).
MAX_VIEWPORT = 8192


def _numbers(name: str, text: str) -> list[float | None]:
    values: list[float | None] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            values.append(None)
            continue
        value = float(piece) if _DECIMAL.fullmatch(piece) else math.nan
        if not math.isfinite(value) or abs(value) > 1e12:
            fail(400, f"{name} takes numbers separated by commas, not {text!r}")
        values.append(value)
    return values


def parse_window(text: str | None) -> render.Window | None:
    if text is None:
        return None
    pieces = text.split(",")
    if len(pieces) not in (2, 3):
        fail(400, "window is center,width or center,width,function")
    center, width = _numbers("window", ",".join(pieces[:2]))
    if center is None or width is None:
        fail(400, "window needs both a center and a width")
    name = pieces[2].strip().lower() if len(pieces) == 3 else "linear"
    function = _FUNCTIONS.get(name)
    if function is None:
        fail(400, f"window function {name!r} is not one of linear, linear-exact, sigmoid")
    try:
        return render.Window(center, width, function)
    except ValueError as exc:
        fail(400, str(exc))


def parse_viewport(text: str | None, default: int | None = None) -> render.Viewport | None:
    if text is None:
        return None if default is None else render.Viewport(default, default)
    values = _numbers("viewport", text)
    if len(values) not in (2, 6) or values[0] is None or values[1] is None:
        fail(400, "viewport is vw,vh or vw,vh,sx,sy,sw,sh")
    if not (1 <= values[0] <= MAX_VIEWPORT and 1 <= values[1] <= MAX_VIEWPORT):
        fail(400, f"a viewport's width and height are 1 to {MAX_VIEWPORT} pixels")
    source = None
    if len(values) == 6 and all(v is not None for v in values[2:]):
        sx, sy, sw, sh = (int(v or 0) for v in values[2:])
        source = (sx, sy, sw, sh)
    try:
        return render.Viewport(int(values[0]), int(values[1]), source)
    except ValueError as exc:
        fail(400, str(exc))


def parse_quality(text: str | None) -> int:
    if text is None:
        return render.DEFAULT_QUALITY
    try:
        return whole_number(text.strip(), name="quality", minimum=1, maximum=100)
    except ValueError:
        fail(400, f"quality is a whole number from 1 to 100, not {text!r}")


def choose_media_type(request: Request) -> str:
    for accept in multipart.parse_accept(request.headers.get("accept")):
        if accept.media_type in render.FORMATS:
            return accept.media_type
        if accept.matches(DEFAULT_MEDIA_TYPE):
            return DEFAULT_MEDIA_TYPE
    fail(406, f"rendered images are available as {', '.join(render.FORMATS)}")


def _rendered(
    request: Request,
    session: DbSession,
    user: ImagingUser,
    archive: ArchiveService,
    item: Located,
    action: AuditAction,
    *,
    frame: int = 0,
    default_viewport: int | None = None,
) -> Response:
    """``item`` rendered as the request asks, the read audited as ``action``."""
    audit_read(
        session,
        user,
        action=action,
        object_type="instance",
        object_id=item.sop_instance_uid,
        request=request,
    )
    media_type = choose_media_type(request)
    params = request.query_params
    window = parse_window(params.get("window"))
    viewport = parse_viewport(params.get("viewport"), default_viewport)
    quality = parse_quality(params.get("quality"))
    cache = get_runtime(request).get(RenderCache)
    try:
        content = cache.rendered(
            f"{item.sop_instance_uid}:{item.file_path}",
            lambda: read_dataset(archive, item),
            frame=frame,
            window=window,
            viewport=viewport,
            media_type=media_type,
            quality=quality,
        )
    except render.RenderError as exc:
        fail(status_for(exc), exc.message)
    except ValueError as exc:
        fail(400, str(exc))
    return Response(content, media_type=media_type)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary="WADO-RS: an instance rendered as JPEG or PNG (its first frame)",
)
def instance_rendered(
    study: str,
    series: str,
    instance: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    (item,) = locate(session, runtime.get(ArchiveService), study, series, instance)
    return _rendered(
        request, session, user, runtime.get(ArchiveService), item, AuditAction.RETRIEVE_RENDERED
    )


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
    summary="WADO-RS: one frame rendered as JPEG or PNG",
)
def frame_rendered(
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
    if len(numbers) != 1:
        fail(400, "render one frame per request")
    (item,) = locate(session, runtime.get(ArchiveService), study, series, instance)
    return _rendered(
        request,
        session,
        user,
        runtime.get(ArchiveService),
        item,
        AuditAction.RETRIEVE_RENDERED,
        frame=numbers[0] - 1,
    )


# Thumbnails ---------------------------------------------------------------------------------
def _thumbnail(
    request: Request, session: DbSession, user: ImagingUser, archive: ArchiveService, item: Located
) -> Response:
    return _rendered(
        request,
        session,
        user,
        archive,
        item,
        AuditAction.RETRIEVE_THUMBNAIL,
        default_viewport=THUMBNAIL_SIZE,
    )


def _representative(items: list[Located]) -> Located:
    """The middle image of the first series that has images (else the first instance)."""
    images = [i for i in items if i.is_image]
    if not images:
        return items[0]
    series = [i for i in images if i.series == images[0].series]
    return series[len(series) // 2]


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
    summary="WADO-RS: thumbnail of an instance",
)
def instance_thumbnail(
    study: str,
    series: str,
    instance: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    (item,) = locate(session, runtime.get(ArchiveService), study, series, instance)
    return _thumbnail(request, session, user, runtime.get(ArchiveService), item)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="WADO-RS: thumbnail of a series")
def series_thumbnail(
    study: str,
    series: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ImagingUser,
) -> Response:
    item = _representative(locate(session, runtime.get(ArchiveService), study, series))
    return _thumbnail(request, session, user, runtime.get(ArchiveService), item)


@router.get("/studies/{study}/thumbnail", summary="WADO-RS: thumbnail of a study")
def study_thumbnail(
    study: str, request: Request, session: DbSession, runtime: RuntimeDep, user: ImagingUser
) -> Response:
    item = _representative(locate(session, runtime.get(ArchiveService), study))
    return _thumbnail(request, session, user, runtime.get(ArchiveService), item)
