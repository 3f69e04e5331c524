"""What every request passes before any route: cross-site refusal, API body types and JSON
limits; and the security headers every response leaves with.

A pure ASGI middleware (``RequestGuard``, installed by ``qamqor.web.app``):

- **Cross-site requests that change state are refused** (403), whatever credentials they
  carry: a browser replays cookies and cached HTTP Basic credentials on a form or ``fetch``
  from another site. A request is cross-site when the browser says so (``Sec-Fetch-Site``
  other than ``same-origin`` or ``none``) or, from a browser that does not send that header,
  when its ``Origin`` is not this server; an origin listed in ``cors_origins`` is trusted
  (a viewer deployed on its own origin). Programs send neither header and pass.
- **API bodies have the API's type** (415 otherwise): JSON (``application/json`` or
  ``application/*+json``) under the JSON APIs, ``multipart/related`` for DICOMweb's STOW-RS.
  A plain HTML form can send only ``text/plain``, ``application/x-www-form-urlencoded`` and
  ``multipart/form-data``, so none of those reaches an API. (A request with no credentials
  at all goes on to its route, which answers 401.)
- **JSON bodies are bounded**: at most ``MAX_JSON_BYTES`` (413) and ``MAX_JSON_DEPTH`` levels
  of nesting (400): Python's parser would raise ``RecursionError`` near 1,000.
- **Headers**: ``X-Content-Type-Options: nosniff`` on every response; ``Cache-Control:
  no-store`` on every API and JSON response (errors included) that does not set its own.
  Pages set theirs (``templating.PAGE_HEADERS``); static files may be cached.

Refusals are in the shape of the API asked: an OperationOutcome under ``/fhir``, else
``{"detail": ...}``. The CSRF token of cookie-authenticated requests is checked where the
principal is known (``deps.current_user``); this middleware knows nothing about users.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qamqor.http.csrf import SAFE_METHODS, SESSION_COOKIE

#: Paths of the JSON APIs (their bodies are JSON, their answers never cached).
JSON_API_PREFIXES: Final = ("/api/", "/fhir/", "/reading/api/", "/kiosk/api/")
DICOMWEB_PREFIX: Final = "/dicom-web/"
#: Every path that answers programs (``pages.API_PREFIXES`` plus the health check).
NO_STORE_PREFIXES: Final = (*JSON_API_PREFIXES, DICOMWEB_PREFIX, "/fhir", "/dicom-web", "/health")
MAX_JSON_BYTES: Final = 1024 * 1024
MAX_JSON_DEPTH: Final = 64
FHIR_JSON: Final = "application/fhir+json"

#: One JSON token that matters for depth: a whole string (escapes included; an unterminated
#: one runs to the end, so every quote starts exactly one match: linear time) or a bracket.
_JSON_TOKEN: Final = re.compile(rb'"(?:[^"\\]++|\\.|\\\Z)*+(?:"|\Z)|[\[\]{}]', re.DOTALL)


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` nests arrays and objects more than ``limit`` levels (brackets inside
    strings do not count)."""
    depth = 0
    for match in _JSON_TOKEN.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").partition(";")[0].strip().lower()


def is_json_type(media_type: str) -> bool:
    """``application/json``, ``application/*+json``, and ``application/json+fhir`` (what FHIR
    clients of DSTU2 days still send)."""
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (
        subtype == "json" or subtype.endswith("+json") or subtype == "json+fhir"
    )


def cross_site_reason(headers: dict[str, str], trusted_origins: Iterable[str]) -> str | None:
    """Why a state-changing request with these headers is refused as cross-site, or None."""
    origin = headers.get("origin")
    if origin is not None and origin in trusted_origins:
        return None
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site.strip().lower() in ("same-origin", "none"):
            return None
        return (
            f"a {fetch_site} request (Sec-Fetch-Site) may not change anything here; "
            "use this server's own pages, or an origin listed in cors_origins"
        )
    if origin is None:
        return None  # a program, or a browser that sends neither header on a same-origin GET
    ours = {headers.get("host", ""), headers.get("x-forwarded-host", "").split(",")[0].strip()}
    if origin != "null" and urlsplit(origin).netloc in ours - {""}:
        return None
    return (
        f"a request from origin {origin} may not change anything here; "
        "use this server's own pages, or an origin listed in cors_origins"
    )


def _body_type_reason(path: str, method: str, media_type: str, has_body: bool) -> str | None:
    """Why this body may not go to this API (415), or None."""
    if path.startswith(DICOMWEB_PREFIX) or path == "/dicom-web":
        if method == "POST" and media_type != "multipart/related":
            return (
                'STOW-RS takes multipart/related; type="application/dicom", '
                f"not {media_type or 'a body without Content-Type'}"
            )
        return None
    if has_body and not is_json_type(media_type):
        wanted = f"{FHIR_JSON} or application/json" if path.startswith("/fhir") else "JSON"
        return f"this API takes {wanted} (Content-Type), not {media_type or 'nothing'}"
    return None


def _has_credentials(headers: dict[str, str]) -> bool:
    """Whether the request says who sends it; one that does not is answered 401 by the route
    (whatever its body: authentication comes first)."""
    return "authorization" in headers or f"{SESSION_COOKIE}=" in headers.get("cookie", "")


def _is_api(path: str) -> bool:
    return path.startswith(JSON_API_PREFIXES) or path in ("/fhir", "/api")


def _is_guarded(path: str) -> bool:
    return _is_api(path) or path.startswith(DICOMWEB_PREFIX) or path == "/dicom-web"


class RequestGuard:
    """See the module's description."""

    def __init__(self, app: ASGIApp, *, trusted_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.trusted_origins = frozenset(trusted_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        send = self._with_headers(path, send)
        method: str = scope["method"]
        if method in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        reason = cross_site_reason(headers, self.trusted_origins)
        if reason is not None:
            await _refuse(path, 403, "forbidden", reason, send)
            return
        if not _is_guarded(path):
            await self.app(scope, receive, send)
            return
        media_type = _media_type(headers)
        has_body = headers.get("content-length", "0").strip() not in ("", "0") or (
            "transfer-encoding" in headers
        )
        reason = _body_type_reason(path, method, media_type, has_body)
        if reason is not None and _has_credentials(headers):
            await _refuse(path, 415, "not-supported", reason, send)
            return
        if has_body and is_json_type(media_type) and _is_api(path):
            body, problem = await _read_json_body(receive)
            if problem is not None:
                status, code, reason = problem
                await _refuse(path, status, code, reason, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    @staticmethod
    def _with_headers(path: str, send: Send) -> Send:
        program_path = path.startswith(NO_STORE_PREFIXES)

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                names = {name.lower() for name, _ in raw}
                if b"x-content-type-options" not in names:
                    raw.append((b"x-content-type-options", b"nosniff"))
                if b"cache-control" not in names:
                    content_type = next((v for n, v in raw if n.lower() == b"content-type"), b"")
                    media_type = content_type.decode("latin-1").partition(";")[0].strip().lower()
                    if program_path or is_json_type(media_type):
                        raw.append((b"cache-control", b"no-store"))
                message = {**message, "headers": raw}
            await send(message)

        return sending


async def _read_json_body(receive: Receive) -> tuple[bytes, tuple[int, str, str] | None]:
    """The whole body, or why it is refused (413 too large, 400 too deep)."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"", (400, "incomplete", "the request body did not arrive")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            return b"", (
                413,
                "too-costly",
                f"a JSON body has at most {MAX_JSON_BYTES // 1024} KiB",
            )
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    if json_too_deep(body):
        return body, (
            400,
            "structure",
            f"JSON nested more than {MAX_JSON_DEPTH} levels deep is not accepted",
        )
    return body, None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the client sends (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(path: str, status: int, code: str, reason: str, send: Send) -> None:
    content: dict[str, Any]
    if path.startswith("/fhir"):
        media_type = FHIR_JSON
        content = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": reason}],
        }
    else:
        media_type = "application/json"
        content = {"detail": reason}
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
