"""Typed dependencies shared by every router: database session, current user, role guards.

APIs accept HTTP Basic auth and bearer tokens (what viewers and scripts send); pages use the
session cookie set by the login page. Nothing is anonymous.

How the caller signed in is kept on ``request.state.authenticated_by`` (``AUTH_COOKIE``,
``AUTH_BASIC`` or ``AUTH_BEARER``). A state-changing API call signed in by the session cookie
needs the page's CSRF token in ``X-CSRF-Token`` (``current_user`` checks it, so every API route
does): a browser sends the cookie with a request forged by another site, never that header.
Cross-site requests are refused before this, whatever their credentials (``qamqor.http.guard``).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

from qamqor.core.auth import Role, SignInBlockedError, sign_in, user_for_token, web_session_user
from qamqor.core.errors import AuthenticationError
from qamqor.core.models import User
from qamqor.core.runtime import Runtime
from qamqor.core.settings import Settings
from qamqor.http.csrf import SAFE_METHODS, CsrfError, header_token_is_valid

SESSION_ID_KEY = "sid"
SESSION_SEEN_KEY = "seen"
AUTH_COOKIE = "cookie"
AUTH_BASIC = "basic"
AUTH_BEARER = "bearer"


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    with runtime.session_factory() as session:
        yield session


DbSession = Annotated[Session, Depends(get_session)]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller (detached from any session)."""

    id: int
    username: str
    role: Role
    language: str

    @classmethod
    def of(cls, user: User) -> Principal:
        return cls(user.id, user.username, Role(user.role), user.language)


class _BasicAuthCache:
    """Remembers verified Basic credentials for a few minutes.

    Viewers send Basic auth on every request; an argon2 check each time would cost ~50 ms.
    Only a SHA-256 of the credentials is kept, in memory.
    """

    ttl_seconds = 300.0

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(username: str, password: str) -> str:
        return hashlib.sha256(f"{username}\0{password}".encode()).hexdigest()

    def get(self, username: str, password: str) -> Principal | None:
        with self._lock:
            entry = self._entries.get(self._key(username, password))
        if entry and entry[0] > time.monotonic():
            return entry[1]
        return None

    def put(self, username: str, password: str, principal: Principal) -> None:
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[self._key(username, password)] = (
                time.monotonic() + self.ttl_seconds,
                principal,
            )


basic_auth_cache = _BasicAuthCache()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Basic realm="Qamqor", charset="UTF-8"'},
    )


def _from_header(request: Request, session: Session, settings: Settings) -> Principal | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, credentials = header.partition(" ")
    scheme = scheme.lower()
    try:
        if scheme == "bearer":
            return Principal.of(user_for_token(session, credentials.strip()))
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise _unauthorized("malformed Basic credentials") from None
            username, _, password = decoded.partition(":")
            cached = basic_auth_cache.get(username, password)
            if cached is not None:
                return cached
            user = sign_in(
                session,
                username=username,
                password=password,
                source=f"http:{request.client.host if request.client else 'unknown'}",
                max_failures=settings.login_max_failures,
                lockout=timedelta(minutes=settings.login_lockout_minutes),
                channel="HTTP Basic",
            )
            principal = Principal.of(user)
            session.commit()  # a rehashed password is saved
            basic_auth_cache.put(username, password, principal)
            return principal
    except SignInBlockedError as exc:
        raise HTTPException(
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            detail=exc.message,
            headers={"Retry-After": str(exc.retry_after_seconds)},
        ) from None
    except AuthenticationError as exc:
        raise _unauthorized(exc.message) from None
    raise _unauthorized(f"unsupported authorization scheme {scheme!r}")


def _from_cookie(request: Request, session: Session, timeout_seconds: float) -> Principal | None:
    if "session" not in request.scope:
        return None
    sid = request.session.get(SESSION_ID_KEY)
    if not isinstance(sid, str):
        return None
    seen = float(request.session.get(SESSION_SEEN_KEY, 0))
    now = time.time()
    if now - seen > timeout_seconds:
        request.session.clear()
        return None
    user = web_session_user(session, sid)
    if user is None:  # signed out (here or everywhere), or the user was disabled
        request.session.clear()
        return None
    request.session[SESSION_SEEN_KEY] = now
    return Principal.of(user)


def optional_user(request: Request, session: DbSession, runtime: RuntimeDep) -> Principal | None:
    principal = _from_header(request, session, runtime.settings)
    if principal is not None:
        scheme = request.headers.get("authorization", "").partition(" ")[0].lower()
        request.state.authenticated_by = AUTH_BEARER if scheme == "bearer" else AUTH_BASIC
    else:
        timeout = runtime.settings.session_timeout_minutes * 60
        principal = _from_cookie(request, session, timeout)
        if principal is not None:
            request.state.authenticated_by = AUTH_COOKIE
    if principal is not None:
        request.state.principal = principal
    return principal


#: Why a cookie-authenticated API call without the token is refused (403).
COOKIE_CALL_NEEDS_HEADER = (
    "this request is signed in by the session cookie: a request that changes something needs "
    "the page's CSRF token in the X-CSRF-Token header (programs: use HTTP Basic or a bearer "
    "token instead of the cookie)"
)


def current_user(
    request: Request, principal: Annotated[Principal | None, Depends(optional_user)]
) -> Principal:
    """The caller of an API; 401 if nobody, 403 for a cookie-authenticated state change
    without the CSRF header."""
    if principal is None:
        raise _unauthorized("log in, or send HTTP Basic credentials or a bearer token")
    if (
        request.method not in SAFE_METHODS
        and getattr(request.state, "authenticated_by", None) == AUTH_COOKIE
        and not header_token_is_valid(request)
    ):
        raise CsrfError(COOKIE_CALL_NEEDS_HEADER)
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def require_role(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency that lets only ``roles`` (and admins) through."""
    allowed = frozenset(roles) | {Role.ADMIN}

    def guard(user: CurrentUser) -> Principal:
        if user.role not in allowed:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"this needs one of the roles: {', '.join(sorted(allowed))}",
            )
        return user

    guard.allowed_roles = allowed  # type: ignore[attr-defined]  # read by web.navigation
    return guard
