"""Users, roles, password hashes (argon2) and API tokens."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from qamqor.core import audit
from qamqor.core.db import utcnow
from qamqor.core.errors import AuthenticationError, ErrorKind, QamqorError
from qamqor.core.models import ApiToken, AuditEvent, User, WebSession


class Role(StrEnum):
    """What a user may do. Patient-data roles are listed in ``CLINICAL_ROLES``."""

    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    """Radiographer: sends and checks images."""
    REGISTRAR = "registrar"
    OPERATOR = "operator"
    """Contact-center operator."""
    HEAD = "head"
    """Department head: sees aggregate dashboards."""
    SERVICE = "service"
    """A machine account for viewers, gateways and scripts."""
    KIOSK = "kiosk"
    """A self-service terminal or hall display: its device token opens ``/kiosk`` only."""


#: Roles allowed to read images and their patient data.
IMAGING_ROLES = frozenset({Role.ADMIN, Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.SERVICE})
#: Roles allowed to read and change the registry and appointments (FHIR API, registrars' work).
REGISTRY_ROLES = frozenset({Role.ADMIN, Role.REGISTRAR, Role.OPERATOR, Role.SERVICE})

_hasher = PasswordHasher()
MIN_PASSWORD_LENGTH = 8


class UserError(QamqorError):
    pass


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def create_user(
    session: Session, *, username: str, password: str, role: Role | str, full_name: str = ""
) -> User:
    """Add a user; the caller commits.

    Spaces around ``username`` are dropped (a slip when typing it); signing in matches the
    stored name exactly, so ``"admin "`` never signs in as ``admin``.
    """
    username = username.strip()
    if not username or len(username) > 64:
        raise UserError("a username has 1 to 64 characters")
    if not username.isprintable():
        raise UserError("a username has no control characters or line breaks")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    try:
        role = Role(role)
    except ValueError:
        raise UserError(f"unknown role {role!r}; one of: {', '.join(Role)}") from None
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise UserError(f"user {username!r} exists already")
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role.value,
        full_name=full_name,
    )
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, *, username: str, password: str) -> User:
    """The active user with these credentials, or ``AuthenticationError``.

    The username matches exactly: one with spaces around it is no user's (``create_user``
    drops them), whatever the database's collation makes of trailing spaces.
    """
    exact = bool(username) and username == username.strip()
    user = session.scalar(select(User).where(User.username == username)) if exact else None
    if user is None or not user.active:
        # Spend the same time as a real check, so usernames cannot be probed by timing.
        _hasher.hash(password)
        raise AuthenticationError("wrong username or password")
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise AuthenticationError("wrong username or password") from None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return user


LOGIN_FAILED = audit.AuditAction.LOGIN_FAILED
LOGIN = audit.AuditAction.LOGIN
LOGIN_BLOCKED = audit.AuditAction.LOGIN_BLOCKED


class SignInBlockedError(AuthenticationError):
    """Too many wrong passwords for this username lately: no password is checked until
    ``until`` (brute-force protection)."""

    kind = ErrorKind.TOO_MANY_REQUESTS

    def __init__(self, until: datetime) -> None:
        super().__init__("too many failed sign-ins for this username; try again later")
        self.until = until

    @property
    def retry_after_seconds(self) -> int:
        return max(int((self.until - utcnow()).total_seconds()) + 1, 1)


def check_sign_in_allowed(
    session: Session, *, username: str, max_failures: int, lockout: timedelta
) -> None:
    """Refuse a sign-in (``SignInBlockedError``) after ``max_failures`` failures within
    ``lockout`` since the username's last successful sign-in.

    The failures are the audit trail's ``login_failed`` events, so every process (and every
    worker of a deployment) counts the same ones. The lock is per username, from any source:
    guessing from many addresses does not help; the price is that someone who knows a username
    can keep it locked, which the audit trail shows.
    """
    now = utcnow()
    last_success = session.scalar(
        select(func.max(AuditEvent.at)).where(
            AuditEvent.actor == username[:64], AuditEvent.action == LOGIN
        )
    )
    since = now - lockout
    if last_success is not None and last_success > since:
        since = last_success
    recent = session.scalars(
        select(AuditEvent.at)
        .where(
            AuditEvent.actor == username[:64],
            AuditEvent.action == LOGIN_FAILED,
            AuditEvent.at > since,
        )
        .order_by(AuditEvent.at.desc())
        .limit(max_failures)
    ).all()
    if len(recent) >= max_failures:
        raise SignInBlockedError(until=recent[-1] + lockout)


def sign_in(
    session: Session,
    *,
    username: str,
    password: str,
    source: str,
    max_failures: int,
    lockout: timedelta,
    channel: str = "",
) -> User:
    """:func:`authenticate` behind :func:`check_sign_in_allowed`; a refusal or a wrong
    password is written to the audit trail (committed: it must count even though the request
    fails)."""
    try:
        check_sign_in_allowed(
            session, username=username, max_failures=max_failures, lockout=lockout
        )
        return authenticate(session, username=username, password=password)
    except AuthenticationError as exc:
        blocked = isinstance(exc, SignInBlockedError)
        audit.record(
            session,
            LOGIN_BLOCKED if blocked else LOGIN_FAILED,
            actor=username or "-",
            object_type="user",
            source=source,
            detail=channel,
        )
        session.commit()
        raise


def start_web_session(session: Session, *, user: User, source: str) -> str:
    """A new browser session of ``user``; returns the id its cookie carries."""
    sid = secrets.token_urlsafe(32)
    session.add(WebSession(sid_hash=_token_digest(sid), user_id=user.id, source=source[:64]))
    return sid


def web_session_user(session: Session, sid: str) -> User | None:
    """The active user of a live browser session, or None (ended, unknown, user disabled)."""
    row = session.scalar(select(WebSession).where(WebSession.sid_hash == _token_digest(sid)))
    if row is None or row.ended_at is not None:
        return None
    user = session.get(User, row.user_id)
    return user if user is not None and user.active else None


def end_web_session(session: Session, sid: str) -> None:
    session.execute(
        update(WebSession)
        .where(WebSession.sid_hash == _token_digest(sid), WebSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )


def sign_out_everywhere(session: Session, user: User) -> int:
    """End every browser session of ``user`` and revoke its API tokens; returns how many
    sessions and tokens were still live."""
    ended = session.execute(
        update(WebSession)
        .where(WebSession.user_id == user.id, WebSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )
    revoked = session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked.is_(False))
        .values(revoked=True)
    )
    return int(getattr(ended, "rowcount", 0) or 0) + int(getattr(revoked, "rowcount", 0) or 0)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, *, user: User, name: str = "", lifetime: timedelta | None = None
) -> str:
    """A new bearer token for ``user``; only its digest is stored, so show it once."""
    token = "qmq_" + secrets.token_urlsafe(32)
    expires: datetime | None = utcnow() + lifetime if lifetime else None
    session.add(
        ApiToken(user_id=user.id, name=name, token_hash=_token_digest(token), expires_at=expires)
    )
    session.flush()
    return token


def user_for_token(session: Session, token: str) -> User:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_digest(token)))
    if row is None or row.revoked or (row.expires_at is not None and row.expires_at < utcnow()):
        raise AuthenticationError("invalid or expired token")
    user = session.get(User, row.user_id)
    if user is None or not user.active:
        raise AuthenticationError("invalid or expired token")
    return user


# The web sign-in's transactions (the login page's router only calls these) -----------------
def open_web_session(session: Session, *, user: User, source: str, language: str | None) -> str:
    """Sign ``user`` in to the browser: a new web session, the audit event, and ``language``
    remembered when the person chose it on the login page. Commits (with a rehashed password,
    if ``sign_in`` rehashed it); returns the id the cookie carries."""
    if language is not None:
        user.language = language
    audit.record(
        session,
        audit.AuditAction.LOGIN,
        actor=user.username,
        object_type="user",
        object_id=str(user.id),
        source=source,
    )
    sid = start_web_session(session, user=user, source=source)
    session.commit()
    return sid


def close_web_session(
    session: Session, *, sid: str | None, user_id: int, username: str, source: str
) -> None:
    """Sign out: the web session ends (a copy of the cookie stops working too), audited.
    Commits."""
    if sid:
        end_web_session(session, sid)
    audit.record(
        session,
        audit.AuditAction.LOGOUT,
        actor=username,
        object_type="user",
        object_id=str(user_id),
        source=source,
    )
    session.commit()


def remember_language(session: Session, *, user_id: int, language: str) -> None:
    """The language a signed-in user chose, for their next sign-in. Commits."""
    user = session.get(User, user_id)
    if user is not None:
        user.language = language
        session.commit()
