"""The kiosk's service: devices, one-time codes for residents, ticket receipts.

One-time codes: six digits, only an HMAC-SHA-256 (keyed with the server's secret) is stored;
a code expires after ``otp_ttl_seconds``, allows ``otp_max_attempts`` tries, works once, and a
resident gets at most ``MAX_CODES_PER_WINDOW`` codes per ``CODE_WINDOW``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qamqor.core.auth import Role, create_token, create_user
from qamqor.core.db import utcnow
from qamqor.core.i18n import N_, gettext
from qamqor.core.models import User
from qamqor.core.settings import Settings
from qamqor.kiosk.errors import CodeError, KioskError, NoCodeSentError
from qamqor.kiosk.models import KioskDevice, OneTimeCode
from qamqor.kiosk.sms import SmsGateway
from qamqor.registry.models import Facility, Resident

SMS_TEXT = N_("Qamqor: your code is %(code)s. Do not tell it to anyone.")
MAX_CODES_PER_WINDOW = 3
CODE_WINDOW = timedelta(minutes=15)


def add_device(
    session: Session, *, name: str, facility_id: int, lifetime: timedelta | None = None
) -> str:
    """A new kiosk device at a facility; returns its token (shown once)."""
    if session.get(Facility, facility_id) is None:
        raise KioskError(N_("No such facility."))
    user = create_user(session, username=name, password=secrets.token_urlsafe(32), role=Role.KIOSK)
    session.add(KioskDevice(user_id=user.id, facility_id=facility_id))
    session.flush()
    return create_token(session, user=user, name="kiosk device", lifetime=lifetime)


@dataclass(frozen=True)
class Device:
    username: str
    facility_id: int


def device_of(session: Session, user_id: int) -> Device | None:
    row = session.execute(
        select(User.username, KioskDevice.facility_id)
        .join(KioskDevice, KioskDevice.user_id == User.id)
        .where(User.id == user_id, User.role == Role.KIOSK.value, User.active.is_(True))
    ).first()
    return Device(row[0], row[1]) if row else None


def _digest(secret: str, resident_id: int, created_at: datetime, code: str) -> str:
    message = f"{resident_id}:{created_at.isoformat()}:{code}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SentCode:
    code_id: int
    shown_code: str | None
    """The code itself in demo mode (shown on screen); ``None`` when it went by SMS."""


def send_code(
    session: Session,
    *,
    resident: Resident,
    kiosk: str,
    settings: Settings,
    gateway: SmsGateway,
    language: str,
    now: datetime | None = None,
) -> SentCode:
    """Create a one-time code for a resident and send it to their phone on record."""
    now = now or utcnow()
    if not resident.phone:
        raise NoCodeSentError(
            N_("No phone number is on record for you. Please ask at the registry desk.")
        )
    recent = session.scalar(
        select(func.count(OneTimeCode.id)).where(
            OneTimeCode.resident_id == resident.id, OneTimeCode.created_at > now - CODE_WINDOW
        )
    )
    if (recent or 0) >= MAX_CODES_PER_WINDOW:
        raise NoCodeSentError(N_("Too many codes were asked for. Please try again in 15 minutes."))
    code = f"{secrets.randbelow(10**6):06d}"
    row = OneTimeCode(
        resident_id=resident.id,
        code_hash=_digest(settings.session_secret(), resident.id, now, code),
        kiosk=kiosk,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.otp_ttl_seconds),
        attempts=0,
    )
    session.add(row)
    session.flush()
    text = gettext(language, SMS_TEXT) % {"code": code}
    gateway.send(to=resident.phone, text=text)
    return SentCode(row.id, code if gateway.demo else None)


def judge_code(
    *, expires_at: datetime, attempts: int, right: bool, settings: Settings, now: datetime
) -> tuple[int, str | None]:
    """The rules every code entry goes through, in order: expired, too many tries, wrong.

    Returns the attempts counted after this entry and the msgid of what is wrong (``None``
    when the code is right). The kiosk applies the same rules to the codes it pretends to
    have sent (an unregistered IIN), so both read alike.
    """
    if expires_at <= now:
        return attempts, N_("The code has expired. Please start again.")
    if attempts >= settings.otp_max_attempts:
        return attempts, N_("Too many wrong codes. Please start again.")
    if right:
        return attempts, None
    attempts += 1
    if attempts >= settings.otp_max_attempts:
        return attempts, N_("Too many wrong codes. Please start again.")
    return attempts, N_("The code is wrong. Please check the SMS and try again.")


def verify_code(
    session: Session,
    *,
    code_id: int,
    code: str,
    settings: Settings,
    now: datetime | None = None,
) -> int:
    """The resident's id when ``code`` is right; ``CodeError`` otherwise (attempts counted)."""
    now = now or utcnow()
    row = session.get(OneTimeCode, code_id)
    if row is None or row.used_at is not None:
        raise CodeError(N_("This code is no longer valid. Please start again."))
    expected = _digest(settings.session_secret(), row.resident_id, row.created_at, code.strip())
    attempts, problem = judge_code(
        expires_at=row.expires_at,
        attempts=row.attempts,
        right=hmac.compare_digest(expected, row.code_hash),
        settings=settings,
        now=now,
    )
    if problem is not None:
        if attempts != row.attempts:
            row.attempts = attempts
            session.flush()
        raise CodeError(problem)
    row.used_at = now
    session.flush()
    return row.resident_id
