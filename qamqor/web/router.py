"""The web foundation's pages: home, login, logout, language, and static files."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import FileResponse, RedirectResponse, Response

from qamqor.core.auth import (
    Role,
    SignInBlockedError,
    close_web_session,
    open_web_session,
    remember_language,
    sign_in,
)
from qamqor.core.errors import AuthenticationError
from qamqor.core.i18n import LANGUAGES, N_
from qamqor.http import navigation
from qamqor.http.csrf import CsrfError, CsrfProtected, csrf_is_valid, rotate_csrf_token
from qamqor.http.deps import (
    SESSION_ID_KEY,
    SESSION_SEEN_KEY,
    DbSession,
    Principal,
    RuntimeDep,
    optional_user,
)
from qamqor.http.pages import client_source, safe_next
from qamqor.http.templating import LANGUAGE_SESSION_KEY, STATIC_DIR, render, request_language

router = APIRouter(tags=["pages"], include_in_schema=False)

OptionalUser = Annotated[Principal | None, Depends(optional_user)]
#: Checked by the route itself where a bad token deserves a friendlier answer than 403 JSON.
CsrfValid = Annotated[bool, Depends(csrf_is_valid)]
#: Set when a language was picked before signing in: it then wins over the saved one.
LANGUAGE_CHOSEN_KEY = "lang_chosen"
FLASH_KEY = "flash"
#: Where sign-in goes when nothing was asked for; a role that may not open it lands on its own
#: first page, or on the home page (``navigation.destination``).
HOME = "/studies"


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


@router.get("/")
def home(request: Request, user: OptionalUser) -> Response:
    """Signed in: the role's first page; a role with none gets this home page, which lists the
    services it may use (never a page that answers 403)."""
    if user is None:
        return _redirect("/login")
    target = navigation.landing(request.app, user.role)
    if target != navigation.HOME_PATH:
        return _redirect(target)
    return render(
        request,
        "home.html",
        {
            "role_name": navigation.ROLE_NAMES.get(user.role, user.role.value),
            "pages": navigation.pages_for(request.app, user.role),
            "services": navigation.services_for(request.app, user.role),
        },
    )


def _login_page(
    request: Request, *, next_path: str, username: str = "", error: str = "", status_code: int = 200
) -> Response:
    message = request.session.pop(FLASH_KEY, "") if "session" in request.scope else ""
    if not message and request.query_params.get("next") and not error:
        message = N_("Please sign in to continue.")
    return render(
        request,
        "login.html",
        {"next": next_path, "username": username, "error": error, "message": message},
        status_code=status_code,
    )


@router.get("/login")
def login_form(request: Request, user: OptionalUser, next: str = "") -> Response:
    next_path = safe_next(next, HOME)
    if user is not None:
        return _redirect(navigation.destination(request.app, user.role, next_path))
    return _login_page(request, next_path=next_path)


@router.post("/login")
def login(
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    csrf_ok: CsrfValid,
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    next_path = safe_next(next, HOME)
    # Not stripped: "admin " is no user (core.auth matches exactly, as HTTP Basic does).
    if not csrf_ok:
        # Typically a login page left open past the session's lifetime: offer a fresh form.
        return _login_page(
            request,
            next_path=next_path,
            username=username,
            error=N_("The form has expired. Please try again."),
            status_code=status.HTTP_403_FORBIDDEN,
        )
    try:
        user = sign_in(
            session,
            username=username,
            password=password,
            source=client_source(request),
            max_failures=runtime.settings.login_max_failures,
            lockout=timedelta(minutes=runtime.settings.login_lockout_minutes),
        )
    except SignInBlockedError as exc:
        response = _login_page(
            request,
            next_path=next_path,
            username=username,
            error=N_("Too many failed sign-ins for this username. Try again in a few minutes."),
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        )
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
        return response
    except AuthenticationError:
        return _login_page(
            request,
            next_path=next_path,
            username=username,
            error=N_("Wrong username or password."),
        )

    language = request_language(request)
    chosen = bool(request.session.get(LANGUAGE_CHOSEN_KEY))  # on the login page: remembered
    if not chosen:
        language = user.language if user.language in LANGUAGES else language
    role = Role(user.role)
    sid = open_web_session(
        session, user=user, source=client_source(request), language=language if chosen else None
    )
    # A new session: nothing set before login (by anyone) survives it.
    request.session.clear()
    request.session[SESSION_ID_KEY] = sid
    request.session[SESSION_SEEN_KEY] = time.time()
    request.session[LANGUAGE_SESSION_KEY] = language
    rotate_csrf_token(request)
    return _redirect(navigation.destination(request.app, role, next_path))


@router.post("/logout")
def logout(
    request: Request, session: DbSession, user: OptionalUser, csrf_ok: CsrfValid
) -> Response:
    if user is None:
        return _redirect("/login")  # nothing to protect: the session is over already
    if not csrf_ok:
        raise CsrfError()
    sid = request.session.get(SESSION_ID_KEY)
    close_web_session(
        session,
        sid=sid if isinstance(sid, str) else None,
        user_id=user.id,
        username=user.username,
        source=client_source(request),
    )
    language = request_language(request)
    request.session.clear()
    request.session[LANGUAGE_SESSION_KEY] = language
    request.session[FLASH_KEY] = N_("You have signed out.")
    return _redirect("/login")


@router.post("/language", dependencies=[CsrfProtected])
def choose_language(
    request: Request,
    session: DbSession,
    user: OptionalUser,
    lang: Annotated[str, Form(max_length=8)],
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    if lang not in LANGUAGES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "unknown language")
    request.session[LANGUAGE_SESSION_KEY] = lang
    if user is None:
        request.session[LANGUAGE_CHOSEN_KEY] = True
    else:
        remember_language(session, user_id=user.id, language=lang)
    return _redirect(safe_next(next, "/"))


@router.get("/favicon.ico")
def favicon() -> Response:
    """The icon browsers ask for on every site (pages also link ``favicon.svg``)."""
    return FileResponse(
        STATIC_DIR / "favicon.ico",
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """Files of ``qamqor/http/static`` (flat: no sub-folders, so no path tricks)."""
    path = STATIC_DIR / name
    if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    return FileResponse(
        path,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


routers = [router]
