"""The kiosk's service: devices, one-time codes for residents, and what the resident's screens
show and do, each in its own transaction (the router only parses, calls and renders).

Uses ``registry`` and ``scheduling`` only through their public surfaces (their packages).

One-time codes: six digits, only an HMAC-SHA-256 (keyed with the server's secret) is stored;
a code expires after ``otp_ttl_seconds``, allows ``otp_max_attempts`` tries, works once, and a
resident gets at most ``MAX_CODES_PER_WINDOW`` codes per ``CODE_WINDOW``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from qamqor import registry, scheduling
from qamqor.core import audit
from qamqor.core.audit import AuditAction
from qamqor.core.auth import Role, create_token, create_user, user_for_token
from qamqor.core.db import begin_write, utcnow, write_session
from qamqor.core.errors import AuthenticationError
from qamqor.core.i18n import N_, gettext
from qamqor.core.models import User
from qamqor.core.settings import Settings
from qamqor.core.timezone import local_time, region_zone
from qamqor.kiosk.errors import CodeError, KioskError, NoCodeSentError
from qamqor.kiosk.models import KioskDevice, OneTimeCode
from qamqor.kiosk.sms import SmsGateway
from qamqor.registry import Facility, Resident, Specialty

logger = logging.getLogger(__name__)

SMS_TEXT = N_("Qamqor: your code is %(code)s. Do not tell it to anyone.")
MAX_CODES_PER_WINDOW = 3
CODE_WINDOW = timedelta(minutes=15)


def add_device(
    session: Session, *, name: str, facility_id: int, lifetime: timedelta | None = None
) -> str:
    """A new kiosk device at a facility; returns its token (shown once)."""
    if registry.find_facility(session, facility_id) is None:
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


def device_facility_id(session: Session, username: str) -> int | None:
    """The facility of the kiosk device named ``username`` (``None``: no such device)."""
    return session.scalar(
        select(KioskDevice.facility_id)
        .join(User, User.id == KioskDevice.user_id)
        .where(User.username == username)
    )


def audit_source(device: Device) -> str:
    return f"kiosk:{device.username}"[:64]


def audit_kiosk(
    session: Session, device: Device, action: AuditAction, object_type: str, object_id: object
) -> None:
    """One audit event done by a kiosk: ``action`` on ``object_type`` (``resident``,
    ``appointment``) number ``object_id``."""
    audit.record(
        session,
        action,
        actor=device.username,
        object_type=object_type,
        object_id=str(object_id),
        source=audit_source(device),
    )


def activate(session: Session, *, token: str, host: str) -> Device | None:
    """The kiosk device whose token this is (its activation audited and committed), or
    ``None`` when the token is not a kiosk device's."""
    device = None
    try:
        user = user_for_token(session, token)
        if user.role == Role.KIOSK:
            device = device_of(session, user.id)
    except AuthenticationError:
        pass
    if device is None:
        return None
    audit.record(
        session,
        AuditAction.KIOSK_ACTIVATED,
        actor=device.username,
        object_type="kiosk",
        object_id=device.username,
        source=f"web:{host}",
    )
    session.commit()
    return device


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


# The resident's screens ----------------------------------------------------------------------
#: Specialties a resident may book at the kiosk (others need a referral).
BOOKABLE = [
    Specialty.GENERAL_PRACTITIONER,
    Specialty.THERAPIST,
    Specialty.PEDIATRICIAN,
    Specialty.GYNECOLOGIST,
    Specialty.MAMMOGRAPHY,
]
#: Booked at the resident's own polyclinic; the others anywhere in its district.
PRIMARY_CARE = {Specialty.GENERAL_PRACTITIONER, Specialty.THERAPIST, Specialty.PEDIATRICIAN}


def bookable(code: str) -> Specialty | None:
    """The specialty ``code`` names when the kiosk books it, else ``None``."""
    return next((s for s in BOOKABLE if s.value == code), None)


def ask_for_code(
    factory: sessionmaker[Session],
    *,
    iin: str,
    device: Device,
    settings: Settings,
    gateway: SmsGateway,
    language: str,
) -> SentCode | None:
    """Send a one-time code to the phone on record of the resident with this IIN.

    ``InvalidIINError`` for a typo (said at once); ``None`` when no code is sent (no such
    resident, no phone, too many codes), which the kiosk does not tell apart from a sent one;
    ``SmsError`` when the gateway did not take it.
    """
    registry.IIN.parse(iin)
    try:
        with write_session(factory) as session:
            resident = registry.resident_by_iin(session, iin)
            sent = send_code(
                session,
                resident=resident,
                kiosk=device.username,
                settings=settings,
                gateway=gateway,
                language=language,
            )
            audit_kiosk(session, device, AuditAction.KIOSK_CODE_SENT, "resident", resident.id)
    except (registry.ResidentNotFoundError, NoCodeSentError):
        logger.info("kiosk %s: no code sent (unregistered IIN, or none due)", device.username)
        return None
    return sent


def sign_in(
    factory: sessionmaker[Session], *, code_id: int, code: str, device: Device, settings: Settings
) -> int:
    """The resident's id when ``code`` is right (the sign-in audited); ``CodeError``
    otherwise, the failed attempt counted."""
    with write_session(factory) as session:  # reads the code, then counts
        try:
            resident_id = verify_code(session, code_id=code_id, code=code, settings=settings)
        except CodeError:
            session.commit()  # the failed attempt counts
            raise
        audit_kiosk(session, device, AuditAction.KIOSK_SIGN_IN, "resident", resident_id)
    return resident_id


@dataclass(frozen=True)
class Home:
    """What the resident's home screen shows."""

    given_name: str
    facility: Facility | None
    """The polyclinic the resident is attached to."""
    appointments: list[scheduling.AppointmentView]
    check_in_open: set[int]
    """Ids of the appointments that can be checked in at this kiosk now."""
    screenings: list[scheduling.ScreeningStatus]
    """The screening programmes the resident is due or invited for."""


def home(
    session: Session,
    *,
    resident_id: int,
    device: Device,
    settings: Settings,
    now: datetime | None = None,
) -> Home:
    """The resident's home screen (the view audited and committed)."""
    now = now or utcnow()
    resident = registry.get_resident(session, resident_id)
    facility = registry.attached_facility(session, resident_id)
    appointments = scheduling.resident_appointments(session, resident_id=resident_id)
    today = local_time(now, region_zone(settings)).date()
    due = [
        s
        for s in scheduling.resident_status(
            session, resident=resident, programs=settings.screening_programs, on=today
        )
        if s.state in (scheduling.ScreeningState.DUE, scheduling.ScreeningState.INVITED)
    ]
    given_name = resident.given_name
    begin_write(session)  # the reads are done; SQLite: see begin_write
    audit_kiosk(session, device, AuditAction.KIOSK_VIEW, "resident", resident_id)
    session.commit()
    check_in_open = {
        a.id
        for a in appointments
        if a.status == scheduling.AppointmentStatus.BOOKED
        and a.start - scheduling.CHECK_IN_EARLY <= now < a.end
        and a.facility_id == device.facility_id
    }
    return Home(given_name, facility, appointments, check_in_open, due)


def search_slots(
    session: Session, *, resident_id: int, specialty: Specialty, limit: int = 8
) -> list[scheduling.FreeSlot]:
    """Free slots the resident may book: primary care at their polyclinic, the rest in its
    district (anywhere when they are attached nowhere)."""
    facility = registry.attached_facility(session, resident_id)
    if facility is None:
        return scheduling.free_slots(session, specialty=specialty.value, limit=limit)
    if specialty in PRIMARY_CARE:
        return scheduling.free_slots(
            session, specialty=specialty.value, facility_id=facility.id, limit=limit
        )
    return scheduling.free_slots(
        session, specialty=specialty.value, district_id=facility.district_id, limit=limit
    )


def own_appointment_id(session: Session, *, appointment_id: int, resident_id: int) -> int:
    """``appointment_id`` when it is the resident's; ``AppointmentNotFoundError`` if not."""
    return scheduling.get_appointment(session, appointment_id, resident_id=resident_id).id


def slots_like(
    session: Session, *, slot_id: int, resident_id: int
) -> tuple[str, list[scheduling.FreeSlot]]:
    """The specialty of ``slot_id`` and the resident's free slots of it (to choose again
    after a refused booking); no slots when the kiosk does not book that specialty."""
    code = scheduling.slot_specialty(session, slot_id) or ""
    specialty = bookable(code)
    if specialty is None:
        return code, []
    return code, search_slots(session, resident_id=resident_id, specialty=specialty)


def book(
    factory: sessionmaker[Session],
    *,
    slot_id: int,
    resident_id: int,
    device: Device,
    replace: int | None = None,
) -> int:
    """Book ``slot_id`` for the resident, or move appointment ``replace`` to it; returns the
    new appointment's id."""
    with write_session(factory) as session:
        if replace is not None:
            appointment = scheduling.reschedule(
                session,
                appointment_id=replace,
                new_slot_id=slot_id,
                resident_id=resident_id,
                actor=device.username,
                source="kiosk",
            )
            action = AuditAction.KIOSK_RESCHEDULE
        else:
            appointment = scheduling.book(
                session,
                slot_id=slot_id,
                resident_id=resident_id,
                actor=device.username,
                source="kiosk",
            )
            action = AuditAction.KIOSK_BOOK
        audit_kiosk(session, device, action, "appointment", appointment.id)
        return appointment.id


def cancel(
    factory: sessionmaker[Session], *, appointment_id: int, resident_id: int, device: Device
) -> None:
    with write_session(factory) as session:
        scheduling.cancel(session, appointment_id=appointment_id, resident_id=resident_id)
        audit_kiosk(session, device, AuditAction.KIOSK_CANCEL, "appointment", appointment_id)


def check_in(
    factory: sessionmaker[Session], *, appointment_id: int, resident_id: int, device: Device
) -> int:
    """Check in for the resident's appointment at this kiosk's facility; the ticket's id."""
    with write_session(factory) as session:
        appointment = scheduling.get_appointment(session, appointment_id, resident_id=resident_id)
        if appointment.facility_id != device.facility_id:
            raise scheduling.AppointmentStateError(
                N_("Please check in at a kiosk of the polyclinic of your appointment.")
            )
        ticket = scheduling.check_in(
            session, appointment_id=appointment_id, resident_id=resident_id
        )
        audit_kiosk(session, device, AuditAction.KIOSK_CHECK_IN, "appointment", appointment_id)
        return ticket.id


def resident_ticket(
    session: Session, *, ticket_id: int, resident_id: int
) -> scheduling.TicketView | None:
    """The resident's ticket (``None`` when it is not theirs)."""
    return scheduling.resident_ticket(session, ticket_id=ticket_id, resident_id=resident_id)


# The hall display ----------------------------------------------------------------------------
def facility(session: Session, facility_id: int) -> Facility:
    return registry.get_facility(session, facility_id)


@dataclass(frozen=True)
class Hall:
    called: list[scheduling.CalledTicket]
    """Today's called tickets, the latest first."""
    waiting: int


def hall(session: Session, *, facility_id: int) -> Hall:
    return Hall(
        called=scheduling.called_tickets(session, facility_id=facility_id),
        waiting=scheduling.waiting_count(session, facility_id=facility_id),
    )
