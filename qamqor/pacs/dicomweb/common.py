"""What every DICOMweb route shares: who may call, audit, URLs, errors, DICOM JSON."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydicom import Dataset
from sqlalchemy.orm import Session

from qamqor.core import audit
from qamqor.core.audit import AuditAction
from qamqor.core.auth import Role
from qamqor.core.db import begin_write
from qamqor.http.deps import Principal, require_role

logger = logging.getLogger("qamqor.pacs.dicomweb")

PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"

#: Radiologists, technologists and machine accounts (viewers, gateways); admins pass too.
_imaging_user = require_role(Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.SERVICE)
ImagingUser = Annotated[Principal, Depends(_imaging_user)]


_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")


def base_url(request: Request) -> str:
    """``http://host:port/dicom-web`` as the caller sees it (RetrieveURL, BulkDataURI).

    Built from the Host header. Some clients (dicomweb-client among them) leave the port out
    of Host even when it is not the scheme's default; when no proxy is in between (no
    forwarding headers), the port the request came in on is put back.
    """
    url = request.base_url
    server = request.scope.get("server")
    if url.port is None and server and not any(h in request.headers for h in _FORWARDING_HEADERS):
        port = server[1]
        if port and port != (443 if url.scheme == "https" else 80):
            url = url.replace(port=port)
    return f"{str(url).rstrip('/')}{PREFIX}"


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"


def audit_read(
    session: Session,
    user: Principal,
    *,
    action: AuditAction,
    object_type: str,
    object_id: str,
    request: Request,
    detail: str = "",
) -> None:
    """Write one audit event for a read of patient data and commit it.

    The event goes in a write transaction of its own: on SQLite the request's read transaction
    cannot become a writing one once another connection has written since it began (a viewer
    fetches several frames at once), and would fail with "database is locked".
    """
    client = request.client.host if request.client else ""
    begin_write(session)
    audit.record(
        session,
        action,
        actor=user.username,
        object_type=object_type,
        object_id=object_id,
        source=f"dicomweb:{client}",
        detail=detail,
    )
    session.commit()


def fail(status: int, reason: str) -> NoReturn:
    """Answer ``status`` with a reason people can act on (never patient data)."""
    raise HTTPException(status_code=status, detail=reason)


def not_found(kind: str, uid: str) -> NoReturn:
    fail(404, f"no {kind} {uid} in the archive")


def dicom_json(
    content: Any, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, media_type=DICOM_JSON, headers=headers)


BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def to_json(
    dataset: Dataset,
    *,
    bulk_data_uri: Callable[[int], str] | None = None,
    bulk_data_threshold: int = 1024,
) -> dict[str, Any]:
    """The DICOM JSON model of ``dataset``; an element that cannot be written is left out.

    With ``bulk_data_uri``, top-level binary values longer than ``bulk_data_threshold`` bytes
    become a BulkDataURI (``bulk_data_uri(tag)``) instead of inline base64. pydicom's own
    ``suppress_invalid_tags`` logs the exception text, which may quote a value; here only the
    tag and the error type are logged.
    """
    result: dict[str, Any] = {}
    for element in dataset:
        key = f"{element.tag:08X}"
        try:
            value = element.value
            if (
                bulk_data_uri is not None
                and element.VR in BINARY_VRS
                and value is not None
                and len(value) > bulk_data_threshold
            ):
                result[key] = {"vr": element.VR, "BulkDataURI": bulk_data_uri(element.tag)}
                continue
            result[key] = element.to_json_dict(
                bulk_data_element_handler=None, bulk_data_threshold=bulk_data_threshold
            )
        except Exception as exc:
            logger.warning("element %s left out of DICOM JSON: %s", key, type(exc).__name__)
    return result


def warning_header(text: str) -> str:
    """An HTTP ``Warning`` value (PS3.18 8.4.3), ASCII only."""
    clean = text.replace('"', "'").encode("ascii", "replace").decode("ascii")
    return f'299 qamqor "{clean}"'
