"""Dependencies for pages: like ``deps.CurrentUser`` and ``deps.require_role``, but a person
who is not signed in is sent to the login page, and one who may not see a page gets a page
that says so (APIs answer 401 and 403 in JSON instead).

Use in a router::

    @router.get("/things")
    def things(request: Request, user: Annotated[Principal, Depends(require_page_role(...))]):
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, cast
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from qamqor.core.auth import Role
from qamqor.core.errors import QamqorError
from qamqor.core.i18n import N_
from qamqor.http.csrf import CsrfError
from qamqor.http.deps import Principal, optional_user
from qamqor.http.errors import status_for
from qamqor.http.templating import current_path, render

LOGIN_PATH = "/login"


class LoginRequired(Exception):
    """Raised by page dependencies when nobody is signed in."""

    def __init__(self, next_path: str) -> None:
        super().__init__("login required")
        self.next_path = next_path


class PageForbidden(Exception):
    """Raised by page dependencies when the user's role does not allow the page."""


def safe_next(value: str | None, default: str = "/") -> str:
    """``value`` if it is a path on this site, else ``default`` (no open redirects).

    Refuses absolute and scheme-relative URLs (``//host``), backslashes (which browsers read
    as slashes) and any whitespace or control character (browsers drop tabs and newlines, so
    ``/\\t/host`` would become ``//host``).
    """
    if not value or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def login_url(next_path: str | None) -> str:
    target = safe_next(next_path, "")
    if not target or target == "/":
        return LOGIN_PATH
    return f"{LOGIN_PATH}?next={quote(target, safe='/')}"


def page_user(
    request: Request, principal: Annotated[Principal | None, Depends(optional_user)]
) -> Principal:
    """The signed-in user, or a redirect to the login page that comes back here."""
    if principal is None:
        next_path = current_path(request) if request.method in ("GET", "HEAD") else "/"
        raise LoginRequired(next_path)
    return principal


PageUser = Annotated[Principal, Depends(page_user)]


def require_page_role(*roles: Role) -> Callable[[Principal], Principal]:
    """A page dependency that lets only ``roles`` (and admins) through."""
    allowed = frozenset(roles) | {Role.ADMIN}

    def guard(user: PageUser) -> Principal:
        if user.role not in allowed:
            raise PageForbidden()
        return user

    guard.allowed_roles = allowed  # type: ignore[attr-defined]  # read by web.navigation
    return guard


def client_source(request: Request) -> str:
    """Where a request came from, for the audit trail."""
    host = request.client.host if request.client else "unknown"
    return f"web:{host}"


#: Paths that answer programs (JSON, DICOM): never an HTML error page.
API_PREFIXES = ("/api/", "/dicom-web", "/fhir", "/reading/api/", "/kiosk/api/")


def wants_a_page(request: Request) -> bool:
    """A browser navigating to a page (not a script, not an API path)."""
    return (
        request.method == "GET"
        and "text/html" in request.headers.get("accept", "")
        and not request.url.path.startswith(API_PREFIXES)
    )


def install_page_handlers(app: FastAPI) -> None:
    """Turn the page dependencies' exceptions into a redirect and a 403 page, and errors into
    JSON for programs or, for a browser that opens a missing page, a 404 page."""

    async def _login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(login_url(exc.next_path), status_code=303)

    async def _forbidden(request: Request, exc: Exception) -> Response:
        return render(
            request,
            "error.html",
            {
                "title": N_("Access denied"),
                "message": N_("Your role does not give access to this page."),
                "back": "/",  # the pages this role may open
            },
            status_code=403,
        )

    async def _csrf_failed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CsrfError)
        if "text/html" not in request.headers.get("accept", ""):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
        # Usually a page left open past the session's end: say so, and offer the way back.
        referer = urlsplit(request.headers.get("referer", ""))
        same_site = referer.netloc == request.url.netloc
        back = f"{referer.path}?{referer.query}" if referer.query else referer.path
        return render(
            request,
            "error.html",
            {
                "title": N_("The form has expired"),
                "message": N_("The form has expired. Please try again."),
                "back": safe_next(back, "/") if same_site else "/",
            },
            status_code=exc.status_code,
        )

    async def _not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, QamqorError):
            status_code = status_for(exc)
        else:
            status_code = getattr(exc, "status_code", 500)
        if status_code != 404 or not wants_a_page(request):
            if isinstance(exc, QamqorError):
                return JSONResponse({"detail": exc.message}, status_code=status_code)
            return await http_exception_handler(request, cast(StarletteHTTPException, exc))
        return render(
            request,
            "error.html",
            {
                "title": N_("Not found"),
                "message": N_(
                    "There is nothing here: the study or page may have been removed, "
                    "or the link is wrong."
                ),
                "back": "/",
            },
            status_code=404,
        )

    app.add_exception_handler(StarletteHTTPException, _not_found)
    app.add_exception_handler(QamqorError, _not_found)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageForbidden, _forbidden)
    app.add_exception_handler(CsrfError, _csrf_failed)
