"""Scheduling: schedules and slots, booking rules, queues.

Booking is safe under concurrency on both databases:

- a resident holds one appointment per specialty at a time: none overlapping, and no second
  one while one is still to come (``book`` checks it after locking the resident);
- on SQLite, callers use ``write_session`` (``BEGIN IMMEDIATE``): one writer at a time;
- on PostgreSQL, the resident's row is locked (``SELECT ... FOR UPDATE``) so one resident's
  bookings are serialised, and the slot is taken with a conditional
  ``UPDATE ... SET status='busy' WHERE id=? AND status='free'``: of two transactions racing
  for the last slot, the second waits for the first and then updates no row, and gets
  ``SlotTakenError``. Partial unique indexes back up the slot rule and the resident's rule
  for appointments that start together.

Functions take a keyword-only ``session`` and never commit; an error leaves the transaction
to be rolled back by the caller, so nothing is half-booked. The few that take a session
factory instead (``call_next_at``) are a whole unit of work: they open, audit and commit it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Select, and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qamqor import registry
from qamqor.core import audit
from qamqor.core.audit import AuditAction
from qamqor.core.db import utcnow, write_session
from qamqor.core.i18n import N_
from qamqor.core.timezone import local_time, zone_named
from qamqor.registry import Doctor, Facility, Specialty, ensure_open, get_facility
from qamqor.scheduling.enums import (
    ACTIVE_APPOINTMENT_STATUSES,
    UPCOMING_APPOINTMENT_STATUSES,
    AppointmentStatus,
    SlotStatus,
    TicketStatus,
)
from qamqor.scheduling.errors import (
    AppointmentNotFoundError,
    AppointmentStateError,
    ConflictingAppointmentError,
    SchedulingError,
    SlotNotFoundError,
    SlotTakenError,
)
from qamqor.scheduling.models import Appointment, QueueTicket, Schedule, Slot

WORKDAYS = (0, 1, 2, 3, 4)
#: Check-in opens this long before an appointment and closes when its slot ends.
CHECK_IN_EARLY = timedelta(hours=2)


def _locking(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# Schedules and slots --------------------------------------------------------------------------
def create_schedule(
    session: Session,
    *,
    doctor_id: int,
    start_date: date,
    end_date: date,
    day_start: time = time(9, 0),
    day_end: time = time(13, 0),
    slot_minutes: int = 20,
    weekdays: Sequence[int] = WORKDAYS,
) -> Schedule:
    """A doctor's schedule with its free slots (local working hours of the facility)."""
    if end_date < start_date:
        raise SchedulingError(N_("A schedule cannot end before it starts."))
    if not 5 <= slot_minutes <= 240:
        raise SchedulingError(N_("A slot lasts 5 to 240 minutes."))
    doctor = registry.find_doctor(session, doctor_id)
    if doctor is None:
        raise SchedulingError(N_("No such doctor."))
    facility = get_facility(session, doctor.facility_id)
    schedule = Schedule(
        doctor_id=doctor.id,
        facility_id=facility.id,
        specialty=doctor.specialty,
        start_date=start_date,
        end_date=end_date,
        slot_minutes=slot_minutes,
    )
    session.add(schedule)
    session.flush()
    rows = slot_rows(
        schedule_id=schedule.id,
        doctor_id=doctor.id,
        facility_id=facility.id,
        district_id=facility.district_id,
        specialty=doctor.specialty,
        zone=zone_named(facility.timezone),
        start_date=start_date,
        end_date=end_date,
        day_start=day_start,
        day_end=day_end,
        slot_minutes=slot_minutes,
        weekdays=weekdays,
    )
    if rows:
        session.execute(insert(Slot), rows)
    return schedule


def slot_rows(
    *,
    schedule_id: int,
    doctor_id: int,
    facility_id: int,
    district_id: int,
    specialty: str,
    zone: ZoneInfo,
    start_date: date,
    end_date: date,
    day_start: time,
    day_end: time,
    slot_minutes: int,
    weekdays: Sequence[int] = WORKDAYS,
) -> list[dict[str, object]]:
    """The rows of the slots of a schedule (for bulk inserts)."""
    rows: list[dict[str, object]] = []
    step = timedelta(minutes=slot_minutes)
    day = start_date
    while day <= end_date:
        if day.weekday() in weekdays:
            begin = datetime.combine(day, day_start, zone).astimezone(UTC)
            finish = datetime.combine(day, day_end, zone).astimezone(UTC)
            while begin + step <= finish:
                rows.append(
                    {
                        "schedule_id": schedule_id,
                        "doctor_id": doctor_id,
                        "facility_id": facility_id,
                        "district_id": district_id,
                        "specialty": specialty,
                        "start": begin,
                        "end": begin + step,
                        "status": SlotStatus.FREE.value,
                    }
                )
                begin += step
        day += timedelta(days=1)
    return rows


@dataclass(frozen=True)
class FreeSlot:
    slot_id: int
    start: datetime
    end: datetime
    specialty: str
    doctor_id: int
    doctor_name: str
    room: str
    facility_id: int
    facility_name: str
    facility_name_ru: str


def free_slots_query(
    *,
    specialty: str | None = None,
    district_id: int | None = None,
    facility_id: int | None = None,
    doctor_id: int | None = None,
    start_from: datetime | None = None,
    start_before: datetime | None = None,
    limit: int = 20,
) -> Select[Slot, Doctor, Facility]:
    """The query of ``free_slots`` (also for ``EXPLAIN`` in the benchmark)."""
    query = (
        select(Slot, Doctor, Facility)
        .join(Doctor, Doctor.id == Slot.doctor_id)
        .join(Facility, Facility.id == Slot.facility_id)
        .where(Slot.status == SlotStatus.FREE.value, Facility.is_open.is_(True))
        .where(Slot.start >= (start_from or utcnow()))
        .order_by(Slot.start, Slot.id)
        .limit(limit)
    )
    if specialty is not None:
        query = query.where(Slot.specialty == specialty)
    if district_id is not None:
        query = query.where(Slot.district_id == district_id)
    if facility_id is not None:
        query = query.where(Slot.facility_id == facility_id)
    if doctor_id is not None:
        query = query.where(Slot.doctor_id == doctor_id)
    if start_before is not None:
        query = query.where(Slot.start < start_before)
    return query


def free_slots(
    session: Session,
    *,
    specialty: str | None = None,
    district_id: int | None = None,
    facility_id: int | None = None,
    doctor_id: int | None = None,
    start_from: datetime | None = None,
    start_before: datetime | None = None,
    limit: int = 20,
) -> list[FreeSlot]:
    """Free slots of open facilities, the soonest first."""
    query = free_slots_query(
        specialty=specialty,
        district_id=district_id,
        facility_id=facility_id,
        doctor_id=doctor_id,
        start_from=start_from,
        start_before=start_before,
        limit=limit,
    )
    return [
        FreeSlot(
            slot_id=slot.id,
            start=slot.start,
            end=slot.end,
            specialty=slot.specialty,
            doctor_id=doctor.id,
            doctor_name=doctor.short_name,
            room=doctor.room,
            facility_id=facility.id,
            facility_name=facility.name,
            facility_name_ru=facility.name_ru,
        )
        for slot, doctor, facility in session.execute(query).all()
    ]


def slot_specialty(session: Session, slot_id: int) -> str | None:
    """The specialty code of a slot, or ``None`` when there is no such slot."""
    return session.scalar(select(Slot.specialty).where(Slot.id == slot_id))


# Appointments ---------------------------------------------------------------------------------
def book(
    session: Session,
    *,
    slot_id: int,
    resident_id: int,
    actor: str,
    source: str,
    now: datetime | None = None,
) -> Appointment:
    """Book ``slot_id`` for a resident. Raises ``SlotTakenError`` if someone was faster."""
    now = now or utcnow()
    registry.lock_resident(session, resident_id)
    slot = session.get(Slot, slot_id)
    if slot is None:
        raise SlotNotFoundError(N_("No such slot."))
    if slot.start <= now:
        raise SlotTakenError(N_("This time has passed. Please choose another."))
    ensure_open(get_facility(session, slot.facility_id))
    # One appointment per specialty at a time: none that overlaps this slot, and none still to
    # come (booked, or arrived and not over). The resident's lock above serialises this check
    # with every other booking of theirs, so ten bookings at once give one appointment.
    held = session.execute(
        select(Appointment.start, Appointment.end)
        .where(
            Appointment.resident_id == resident_id,
            Appointment.specialty == slot.specialty,
            or_(
                and_(
                    Appointment.status.in_([s.value for s in ACTIVE_APPOINTMENT_STATUSES]),
                    Appointment.start < slot.end,
                    Appointment.end > slot.start,
                ),
                and_(
                    Appointment.status.in_([s.value for s in UPCOMING_APPOINTMENT_STATUSES]),
                    Appointment.end > now,
                ),
            ),
        )
        .limit(1)
    ).first()
    if held is not None:
        if held.start < slot.end and held.end > slot.start:
            raise ConflictingAppointmentError(
                N_("You already have an appointment with this specialty at that time.")
            )
        raise ConflictingAppointmentError(
            N_(
                "You already have an appointment with this specialty. "
                "Move or cancel it to choose another time."
            )
        )
    taken = session.execute(
        update(Slot)
        .where(Slot.id == slot_id, Slot.status == SlotStatus.FREE.value)
        .values(status=SlotStatus.BUSY.value)
        .execution_options(synchronize_session=False)
    )
    if getattr(taken, "rowcount", 0) != 1:
        raise SlotTakenError(N_("This time has just been taken. Please choose another."))
    appointment = Appointment(
        slot_id=slot.id,
        resident_id=resident_id,
        doctor_id=slot.doctor_id,
        facility_id=slot.facility_id,
        specialty=slot.specialty,
        start=slot.start,
        end=slot.end,
        status=AppointmentStatus.BOOKED.value,
        source=source[:20],
        booked_by=actor[:64],
        booked_at=now,
    )
    session.add(appointment)
    try:
        session.flush()
    except IntegrityError:
        # Only reachable if the rules above were bypassed; the caller rolls back.
        raise SlotTakenError(N_("This time has just been taken. Please choose another.")) from None
    session.expire(slot, ["status"])  # the UPDATE changed it; read again only if asked
    return appointment


def get_appointment(
    session: Session, appointment_id: int, *, resident_id: int | None = None
) -> Appointment:
    """An appointment (only the resident's own when ``resident_id`` is given)."""
    appointment = session.get(Appointment, appointment_id)
    if appointment is None or (resident_id is not None and appointment.resident_id != resident_id):
        raise AppointmentNotFoundError(N_("No such appointment."))
    return appointment


def cancel(
    session: Session,
    *,
    appointment_id: int,
    resident_id: int | None = None,
    now: datetime | None = None,
) -> Appointment:
    """Cancel a future booked appointment; its slot is free again at once."""
    now = now or utcnow()
    appointment = get_appointment(session, appointment_id, resident_id=resident_id)
    if appointment.status != AppointmentStatus.BOOKED.value:
        raise AppointmentStateError(N_("Only a booked appointment can be cancelled."))
    if appointment.start <= now:
        raise AppointmentStateError(N_("An appointment that has begun cannot be cancelled."))
    appointment.status = AppointmentStatus.CANCELLED.value
    appointment.cancelled_at = now
    session.flush()
    session.execute(
        update(Slot)
        .where(Slot.id == appointment.slot_id, Slot.status == SlotStatus.BUSY.value)
        .values(status=SlotStatus.FREE.value)
        .execution_options(synchronize_session=False)
    )
    return appointment


def reschedule(
    session: Session,
    *,
    appointment_id: int,
    new_slot_id: int,
    actor: str,
    source: str,
    resident_id: int | None = None,
    now: datetime | None = None,
) -> Appointment:
    """Move an appointment to another slot, in one transaction: both happen or neither."""
    old = get_appointment(session, appointment_id, resident_id=resident_id)
    new_slot = session.get(Slot, new_slot_id)
    if new_slot is None:
        raise SlotNotFoundError(N_("No such slot."))
    if new_slot.specialty != old.specialty:
        raise SchedulingError(N_("An appointment moves only to a slot of the same specialty."))
    cancel(session, appointment_id=old.id, resident_id=resident_id, now=now)
    new = book(
        session,
        slot_id=new_slot_id,
        resident_id=old.resident_id,
        actor=actor,
        source=source,
        now=now,
    )
    new.rescheduled_from_id = old.id
    session.flush()
    return new


def mark_no_show(session: Session, *, appointment_id: int, now: datetime | None = None) -> None:
    now = now or utcnow()
    appointment = get_appointment(session, appointment_id)
    if appointment.status != AppointmentStatus.BOOKED.value or appointment.end > now:
        raise AppointmentStateError(
            N_("Only a booked appointment whose time is over can be marked as missed.")
        )
    appointment.status = AppointmentStatus.NOSHOW.value
    session.flush()


def mark_fulfilled(session: Session, *, appointment_id: int) -> Appointment:
    appointment = get_appointment(session, appointment_id)
    if appointment.status not in (AppointmentStatus.BOOKED.value, AppointmentStatus.ARRIVED.value):
        raise AppointmentStateError(N_("Only a booked appointment can be marked as done."))
    appointment.status = AppointmentStatus.FULFILLED.value
    session.flush()
    return appointment


@dataclass(frozen=True)
class AppointmentView:
    id: int
    start: datetime
    end: datetime
    status: AppointmentStatus
    specialty: str
    doctor_name: str
    room: str
    facility_id: int
    facility_name: str
    facility_name_ru: str
    ticket_code: str | None


def resident_appointments(
    session: Session, *, resident_id: int, since: datetime | None = None
) -> list[AppointmentView]:
    """A resident's active appointments from ``since`` (default: now), the soonest first."""
    rows = session.execute(
        select(Appointment, Doctor, Facility, QueueTicket.code)
        .join(Doctor, Doctor.id == Appointment.doctor_id)
        .join(Facility, Facility.id == Appointment.facility_id)
        .outerjoin(QueueTicket, QueueTicket.appointment_id == Appointment.id)
        .where(
            Appointment.resident_id == resident_id,
            Appointment.end > (since or utcnow()),
            Appointment.status.in_([s.value for s in UPCOMING_APPOINTMENT_STATUSES]),
        )
        .order_by(Appointment.start)
    ).all()
    return [
        AppointmentView(
            id=a.id,
            start=a.start,
            end=a.end,
            status=AppointmentStatus(a.status),
            specialty=a.specialty,
            doctor_name=d.short_name,
            room=d.room,
            facility_id=f.id,
            facility_name=f.name,
            facility_name_ru=f.name_ru,
            ticket_code=code,
        )
        for a, d, f, code in rows
    ]


# Queues ---------------------------------------------------------------------------------------
#: The letter of a specialty's tickets (kept short: the hall display shows them large).
TICKET_PREFIX: dict[str, str] = {
    Specialty.GENERAL_PRACTITIONER: "A",
    Specialty.THERAPIST: "A",
    Specialty.PEDIATRICIAN: "B",
    Specialty.GYNECOLOGIST: "C",
    Specialty.MAMMOGRAPHY: "M",
}


def local_day(facility: Facility, moment: datetime) -> date:
    """The facility's local date at ``moment`` (in the zone the facility names)."""
    return local_time(moment, zone_named(facility.timezone)).date()


def issue_ticket(
    session: Session,
    *,
    facility_id: int,
    specialty: str,
    appointment_id: int | None = None,
    room: str = "",
    now: datetime | None = None,
) -> QueueTicket:
    """The next ticket of the facility's queue today (walk-in, or for an appointment)."""
    now = now or utcnow()
    facility = registry.lock_facility(session, facility_id)
    ensure_open(facility)
    day = local_day(facility, now)
    last = session.scalar(
        select(func.max(QueueTicket.number)).where(
            QueueTicket.facility_id == facility_id, QueueTicket.day == day
        )
    )
    number = (last or 0) + 1
    ticket = QueueTicket(
        facility_id=facility_id,
        day=day,
        number=number,
        code=f"{TICKET_PREFIX.get(specialty, 'D')}-{number:03d}",
        specialty=specialty,
        appointment_id=appointment_id,
        room=room,
        status=TicketStatus.WAITING.value,
        issued_at=now,
    )
    session.add(ticket)
    session.flush()
    return ticket


def check_in(
    session: Session,
    *,
    appointment_id: int,
    resident_id: int | None = None,
    now: datetime | None = None,
) -> QueueTicket:
    """Check in for today's appointment: it becomes ``arrived`` and gets a queue ticket.

    Checking in twice gives the same ticket back.
    """
    now = now or utcnow()
    appointment = get_appointment(session, appointment_id, resident_id=resident_id)
    existing = session.scalar(
        select(QueueTicket).where(QueueTicket.appointment_id == appointment.id)
    )
    if existing is not None and appointment.status == AppointmentStatus.ARRIVED.value:
        return existing
    if appointment.status != AppointmentStatus.BOOKED.value:
        raise AppointmentStateError(N_("This appointment cannot be checked in."))
    if now < appointment.start - CHECK_IN_EARLY:
        raise AppointmentStateError(N_("Check-in opens two hours before the appointment."))
    if now >= appointment.end:
        raise AppointmentStateError(N_("The time of this appointment is over."))
    doctor = registry.find_doctor(session, appointment.doctor_id)
    appointment.status = AppointmentStatus.ARRIVED.value
    session.flush()
    return issue_ticket(
        session,
        facility_id=appointment.facility_id,
        specialty=appointment.specialty,
        appointment_id=appointment.id,
        room=doctor.room if doctor else "",
        now=now,
    )


def call_next(
    session: Session, *, facility_id: int, room: str, now: datetime | None = None
) -> QueueTicket | None:
    """Call the longest-waiting ticket of today to ``room`` (``None`` when nobody waits)."""
    now = now or utcnow()
    facility = get_facility(session, facility_id)
    query = (
        select(QueueTicket)
        .where(
            QueueTicket.facility_id == facility_id,
            QueueTicket.day == local_day(facility, now),
            QueueTicket.status == TicketStatus.WAITING.value,
        )
        .order_by(QueueTicket.number)
        .limit(1)
    )
    if _locking(session):
        query = query.with_for_update(skip_locked=True)
    ticket = session.scalar(query)
    if ticket is None:
        return None
    ticket.status = TicketStatus.CALLED.value
    ticket.called_at = now
    ticket.room = room or ticket.room
    session.flush()
    return ticket


def call_next_at(
    factory: sessionmaker[Session],
    *,
    facility: str,
    room: str,
    actor: str,
    source: str,
    now: datetime | None = None,
) -> str | None:
    """``call_next`` at the facility named by its id or code, audited, in one transaction;
    the called ticket's code (``None`` when nobody waits)."""
    with write_session(factory) as session:
        facility_id = registry.facility_by_key(session, facility).id
        ticket = call_next(session, facility_id=facility_id, room=room, now=now)
        if ticket is None:
            return None
        audit.record(
            session,
            AuditAction.QUEUE_CALL,
            actor=actor,
            object_type="queue_ticket",
            object_id=str(ticket.id),
            source=source,
        )
        return ticket.code


@dataclass(frozen=True)
class CalledTicket:
    code: str
    room: str
    called_at: datetime


def called_tickets(
    session: Session, *, facility_id: int, now: datetime | None = None, limit: int = 8
) -> list[CalledTicket]:
    """Today's called tickets, the latest first (what the hall display shows)."""
    now = now or utcnow()
    facility = get_facility(session, facility_id)
    rows = session.execute(
        select(QueueTicket.code, QueueTicket.room, QueueTicket.called_at)
        .where(
            QueueTicket.facility_id == facility_id,
            QueueTicket.day == local_day(facility, now),
            QueueTicket.status == TicketStatus.CALLED.value,
        )
        .order_by(QueueTicket.called_at.desc(), QueueTicket.id.desc())
        .limit(limit)
    ).all()
    return [CalledTicket(code, room, at) for code, room, at in rows if at is not None]


def waiting_count(session: Session, *, facility_id: int, now: datetime | None = None) -> int:
    facility = get_facility(session, facility_id)
    return int(
        session.scalar(
            select(func.count(QueueTicket.id)).where(
                QueueTicket.facility_id == facility_id,
                QueueTicket.day == local_day(facility, now or utcnow()),
                QueueTicket.status == TicketStatus.WAITING.value,
            )
        )
        or 0
    )


@dataclass(frozen=True)
class TicketView:
    """A resident's queue ticket for an appointment, as the kiosk shows and prints it."""

    id: int
    code: str
    room: str
    specialty: str
    status: TicketStatus
    issued_at: datetime
    appointment_start: datetime
    facility_id: int
    facility_name: str
    facility_name_ru: str
    ahead: int
    """Tickets of the same day at the facility still waiting with a smaller number."""


def resident_ticket(session: Session, *, ticket_id: int, resident_id: int) -> TicketView | None:
    """The ticket ``ticket_id`` when it is for an appointment of this resident, else ``None``."""
    row = session.execute(
        select(QueueTicket, Appointment.start, Facility)
        .join(Appointment, Appointment.id == QueueTicket.appointment_id)
        .join(Facility, Facility.id == QueueTicket.facility_id)
        .where(QueueTicket.id == ticket_id, Appointment.resident_id == resident_id)
    ).first()
    if row is None:
        return None
    ticket, start, facility = row
    ahead = session.scalar(
        select(func.count(QueueTicket.id)).where(
            QueueTicket.facility_id == ticket.facility_id,
            QueueTicket.day == ticket.day,
            QueueTicket.status == TicketStatus.WAITING.value,
            QueueTicket.number < ticket.number,
        )
    )
    return TicketView(
        id=ticket.id,
        code=ticket.code,
        room=ticket.room,
        specialty=ticket.specialty,
        status=TicketStatus(ticket.status),
        issued_at=ticket.issued_at,
        appointment_start=start,
        facility_id=facility.id,
        facility_name=facility.name,
        facility_name_ru=facility.name_ru,
        ahead=int(ahead or 0),
    )


def add_slot(session: Session, *, schedule_id: int, start: datetime, minutes: int) -> Slot:
    """One extra slot in a schedule (e.g. a doctor's added hour)."""
    schedule = session.get(Schedule, schedule_id)
    if schedule is None:
        raise SchedulingError(N_("No such schedule."))
    facility = get_facility(session, schedule.facility_id)
    slot = Slot(
        schedule_id=schedule.id,
        doctor_id=schedule.doctor_id,
        facility_id=facility.id,
        district_id=facility.district_id,
        specialty=schedule.specialty,
        start=start,
        end=start + timedelta(minutes=minutes),
        status=SlotStatus.FREE.value,
    )
    session.add(slot)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise SchedulingError(N_("The doctor has a slot at that time already.")) from None
    return slot
