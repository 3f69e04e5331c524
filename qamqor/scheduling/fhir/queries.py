"""What the FHIR API reads and writes: its queries, its audited reads and its booking, each
read a plain function and each write its own transaction (the router parses the request,
calls these and renders the rows as FHIR resources).

Registry rows come through ``qamqor.registry``'s query functions; scheduling's own tables are
queried here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, sessionmaker

from qamqor import registry
from qamqor.core import audit
from qamqor.core.audit import AuditAction
from qamqor.core.db import begin_write, write_session
from qamqor.core.errors import ErrorKind
from qamqor.core.i18n import N_
from qamqor.registry import District, Doctor, Facility, Resident
from qamqor.scheduling import service
from qamqor.scheduling.enums import SlotStatus
from qamqor.scheduling.errors import SchedulingError
from qamqor.scheduling.models import Appointment, Schedule, Slot


class UnknownPatientError(SchedulingError):
    """A booking names a Patient id that no resident has."""

    kind = ErrorKind.NOT_FOUND

    def __init__(self, resident_id: int) -> None:
        super().__init__(N_("No resident with this IIN is registered."))
        self.resident_id = resident_id


def record_access(
    session: Session,
    action: AuditAction,
    *,
    actor: str,
    object_type: str,
    object_id: str | Iterable[str],
    source: str,
) -> None:
    """Audit a read, once the reads are done, and commit it."""
    begin_write(session)  # the reads are done; SQLite: see begin_write
    audit.record(
        session, action, actor=actor, object_type=object_type, object_id=object_id, source=source
    )
    session.commit()


# Registry rows -------------------------------------------------------------------------------
def patient(session: Session, resident_id: int) -> Resident | None:
    return registry.find_resident(session, resident_id)


def patients(
    session: Session, *, iin: str | None = None, resident_id: int | None = None, limit: int
) -> list[Resident]:
    """Residents by IIN (validated) or id: never a bulk listing."""
    return registry.residents(session, iin=iin, resident_id=resident_id, limit=limit)


def practitioner(session: Session, doctor_id: int) -> Doctor | None:
    return registry.find_doctor(session, doctor_id)


def practitioners(
    session: Session, *, specialty: str | None = None, doctor_id: int | None = None, limit: int
) -> list[Doctor]:
    return registry.doctors(session, specialty=specialty, doctor_id=doctor_id, limit=limit)


def organization(session: Session, facility_id: int) -> tuple[Facility, District | None] | None:
    facility = registry.find_facility(session, facility_id)
    if facility is None:
        return None
    return facility, registry.find_district(session, facility.district_id)


def organizations(
    session: Session, *, facility_id: int | None = None, limit: int
) -> list[tuple[Facility, District]]:
    return registry.facilities(session, facility_id=facility_id, limit=limit)


# Scheduling rows -----------------------------------------------------------------------------
def schedule(session: Session, schedule_id: int) -> Schedule | None:
    return session.get(Schedule, schedule_id)


def schedules(session: Session, *, doctor_id: int | None = None, limit: int) -> list[Schedule]:
    query = select(Schedule).order_by(Schedule.id).limit(limit)
    if doctor_id is not None:
        query = query.where(Schedule.doctor_id == doctor_id)
    return list(session.scalars(query))


def slot(session: Session, slot_id: int) -> Slot | None:
    return session.get(Slot, slot_id)


#: The prefixes of a FHIR date search value.
Prefix = Literal["ge", "gt", "le", "lt", "eq"]


@dataclass(frozen=True)
class StartBound:
    """One ``start`` search value: its prefix and the instants (UTC) the value spans (both
    the same for a dateTime; a day's first and last for a date)."""

    prefix: Prefix
    low: datetime
    high: datetime

    def condition(self) -> ColumnElement[bool]:
        return {
            "ge": Slot.start >= self.low,
            "gt": Slot.start > self.high,
            "le": Slot.start <= self.high,
            "lt": Slot.start < self.low,
            "eq": (Slot.start >= self.low) & (Slot.start <= self.high),
        }[self.prefix]


def slots(
    session: Session,
    *,
    statuses: Sequence[SlotStatus] = (),
    starts: Sequence[StartBound] = (),
    specialty: str | None = None,
    schedule_id: int | None = None,
    district_id: int | None = None,
    limit: int,
) -> list[Slot]:
    """Slots, the soonest first; only free ones asked for: of open facilities only."""
    query = select(Slot).order_by(Slot.start, Slot.id).limit(limit)
    if statuses:
        query = query.where(Slot.status.in_([s.value for s in statuses]))
        if list(statuses) == [SlotStatus.FREE]:
            open_ids = select(Facility.id).where(Facility.is_open.is_(True))
            query = query.where(Slot.facility_id.in_(open_ids))
    for bound in starts:
        query = query.where(bound.condition())
    if specialty:
        query = query.where(Slot.specialty == specialty)
    if schedule_id is not None:
        query = query.where(Slot.schedule_id == schedule_id)
    if district_id is not None:
        query = query.where(Slot.district_id == district_id)
    return list(session.scalars(query))


def appointment(session: Session, appointment_id: int) -> Appointment | None:
    return session.get(Appointment, appointment_id)


def appointments(
    session: Session, *, resident_id: int, statuses: Sequence[str] = (), limit: int
) -> list[Appointment]:
    """A patient's appointments, the soonest first (never a bulk listing)."""
    query = (
        select(Appointment)
        .where(Appointment.resident_id == resident_id)
        .order_by(Appointment.start)
        .limit(limit)
    )
    if statuses:
        query = query.where(Appointment.status.in_(list(statuses)))
    return list(session.scalars(query))


# Booking -------------------------------------------------------------------------------------
def book(
    factory: sessionmaker[Session],
    *,
    slot_id: int,
    resident_id: int | None,
    iin: str | None,
    actor: str,
    source: str,
) -> Appointment:
    """Book ``slot_id`` for the resident (by id, else by IIN), audited, in one transaction.

    Raises ``UnknownPatientError`` for an id no resident has, and the registry's and
    scheduling's errors (taken, conflicting, no such slot, a bad or unknown IIN).
    """
    with write_session(factory) as session:
        if resident_id is None:
            resident_id = registry.resident_by_iin(session, iin or "").id
        elif registry.find_resident(session, resident_id) is None:
            raise UnknownPatientError(resident_id)
        booked = service.book(
            session, slot_id=slot_id, resident_id=resident_id, actor=actor, source="fhir"
        )
        audit.record(
            session,
            AuditAction.FHIR_BOOK,
            actor=actor,
            object_type="appointment",
            object_id=str(booked.id),
            source=source,
            detail=f"slot={booked.slot_id} resident={booked.resident_id}",
        )
        return booked
