"""Protection against cross-site request forgery for cookie-authenticated requests.

A synchronizer token: a random value kept in the (signed) session cookie and put into every
form as ``csrf_token`` (or sent as the ``X-CSRF-Token`` header by scripts in the page). A
state-changing request whose token is missing or does not match gets 403.

API calls authenticated with an ``Authorization`` header (HTTP Basic or a bearer token) and no
session cookie are exempt: a forged cross-site request cannot set that header. A browser may
replay Basic credentials it has cached, though: a request that a browser marks as coming from
another site (``Sec-Fetch-Site``) is exempt only if the browser had to ask permission for it
first (a CORS preflight: any body type a plain HTML form cannot send).

Use in a router::

    @router.post("/things", dependencies=[CsrfProtected])
"""

from __future__ import annotations

import secrets
from typing import Final

from fastapi import Depends, HTTPException, Request, status

CSRF_SESSION_KEY: Final = "csrf"
CSRF_FIELD: Final = "csrf_token"
CSRF_HEADER: Final = "x-csrf-token"
SESSION_COOKIE: Final = "qamqor_session"
"""The session cookie's name (set in ``qamqor.web.app``)."""

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_FORM_TYPES: Final = ("application/x-www-form-urlencoded", "multipart/form-data")
#: Bodies a cross-site page can send without a CORS preflight.
_SIMPLE_TYPES: Final = frozenset({"", *_FORM_TYPES, "text/plain"})


def csrf_token(request: Request) -> str:
    """This session's token, created on first use."""
    token = request.session.get(CSRF_SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        request.session[CSRF_SESSION_KEY] = token
    return token


def rotate_csrf_token(request: Request) -> str:
    """A fresh token (after login: a token seen before it must not outlive it)."""
    request.session[CSRF_SESSION_KEY] = secrets.token_urlsafe(32)
    return str(request.session[CSRF_SESSION_KEY])


def is_header_authenticated_api_call(request: Request) -> bool:
    """True for a script or viewer call: ``Authorization`` header, no session cookie."""
    scheme = request.headers.get("authorization", "").partition(" ")[0].lower()
    if scheme not in ("basic", "bearer"):
        return False
    if SESSION_COOKIE in request.cookies:
        return False
    if request.headers.get("sec-fetch-site", "none") in ("none", "same-origin"):
        return True
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return content_type not in _SIMPLE_TYPES


def header_token_is_valid(request: Request) -> bool:
    """Whether ``X-CSRF-Token`` is this session's token (APIs: JSON bodies have no form field)."""
    expected = request.session.get(CSRF_SESSION_KEY) if "session" in request.scope else None
    submitted = request.headers.get(CSRF_HEADER, "")
    if not isinstance(expected, str) or not expected or not submitted:
        return False
    return secrets.compare_digest(submitted.encode(), expected.encode())


async def submitted_token(request: Request) -> str:
    """The token sent with ``request``: the header, else the form field."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(_FORM_TYPES):
        form = await request.form()  # Starlette caches it: the endpoint still reads the form
        value = form.get(CSRF_FIELD)
        if isinstance(value, str):
            return value
    return ""


async def csrf_is_valid(request: Request) -> bool:
    """Whether ``request`` may change state: safe method, API call, or a matching token."""
    if request.method in SAFE_METHODS or is_header_authenticated_api_call(request):
        return True
    expected = request.session.get(CSRF_SESSION_KEY) if "session" in request.scope else None
    if not isinstance(expected, str) or not expected:
        return False
    submitted = await submitted_token(request)
    return secrets.compare_digest(submitted.encode(), expected.encode())


class CsrfError(HTTPException):
    """403: the CSRF token is missing or wrong (pages show it as a page, APIs as JSON)."""

    def __init__(
        self, detail: str = "the form's security token is missing or out of date; reload the page"
    ) -> None:
        super().__init__(status_code=status.HTTP_403_FORBIDDEN, detail=detail)


async def csrf_protect(request: Request) -> None:
    """Dependency: 403 unless the request carries this session's CSRF token."""
    if not await csrf_is_valid(request):
        raise CsrfError()


#: ``dependencies=[CsrfProtected]`` on a route or router.
CsrfProtected = Depends(csrf_protect)
