"""Scheduling tables: schedules, slots, appointments, queue tickets, screening events."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from qamqor.core.db import Base, UTCDateTime, utcnow
from qamqor.scheduling.enums import AppointmentStatus, SlotStatus, TicketStatus

#: SQL of the statuses that hold a slot (see ``enums.ACTIVE_APPOINTMENT_STATUSES``).
ACTIVE_SQL = "status IN ('booked', 'arrived', 'fulfilled')"


class Schedule(Base):
    """A doctor's planning horizon at a facility (FHIR ``Schedule``)."""

    __tablename__ = "sched_schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    doctor_id: Mapped[int] = mapped_column(ForeignKey("registry_doctors.id"), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("registry_facilities.id"))
    specialty: Mapped[str] = mapped_column(String(40))
    start_date: Mapped[date] = mapped_column(Date)
    end_date: Mapped[date] = mapped_column(Date)
    slot_minutes: Mapped[int] = mapped_column(Integer)


class Slot(Base):
    """A bookable period of one doctor (FHIR ``Slot``)."""

    __tablename__ = "sched_slots"
    __table_args__ = (
        UniqueConstraint("doctor_id", "start", name="uq_sched_slots_doctor_start"),
        # The free-slot search: a specialty across a district, soonest first.
        Index("ix_sched_slots_search", "specialty", "district_id", "status", "start"),
        Index("ix_sched_slots_facility_search", "facility_id", "specialty", "status", "start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("sched_schedules.id"), index=True)
    doctor_id: Mapped[int] = mapped_column(ForeignKey("registry_doctors.id"))
    facility_id: Mapped[int] = mapped_column(ForeignKey("registry_facilities.id"))
    district_id: Mapped[int] = mapped_column(ForeignKey("registry_districts.id"))
    specialty: Mapped[str] = mapped_column(String(40))
    start: Mapped[datetime] = mapped_column(UTCDateTime())
    end: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20), default=SlotStatus.FREE.value)


class Appointment(Base):
    """A resident's booking of a slot (FHIR ``Appointment``)."""

    __tablename__ = "sched_appointments"
    __table_args__ = (
        # No double booking: one active appointment per slot.
        Index(
            "uq_sched_appointments_slot_active",
            "slot_id",
            unique=True,
            sqlite_where=text(ACTIVE_SQL),
            postgresql_where=text(ACTIVE_SQL),
        ),
        # A resident cannot hold two appointments of one specialty starting together.
        Index(
            "uq_sched_appointments_resident_specialty_start",
            "resident_id",
            "specialty",
            "start",
            unique=True,
            sqlite_where=text(ACTIVE_SQL),
            postgresql_where=text(ACTIVE_SQL),
        ),
        Index("ix_sched_appointments_resident", "resident_id", "start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("sched_slots.id"), index=True)
    resident_id: Mapped[int] = mapped_column(ForeignKey("registry_residents.id"))
    doctor_id: Mapped[int] = mapped_column(ForeignKey("registry_doctors.id"))
    facility_id: Mapped[int] = mapped_column(ForeignKey("registry_facilities.id"))
    specialty: Mapped[str] = mapped_column(String(40))
    start: Mapped[datetime] = mapped_column(UTCDateTime())
    end: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20), default=AppointmentStatus.BOOKED.value)
    source: Mapped[str] = mapped_column(String(20), default="")
    """Where it was booked: ``kiosk``, ``fhir``, ``registrar``..."""
    booked_by: Mapped[str] = mapped_column(String(64), default="")
    booked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    rescheduled_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_appointments.id"), nullable=True
    )


class QueueTicket(Base):
    """A numbered ticket of a facility's live queue (walk-in, or checked-in appointment)."""

    __tablename__ = "sched_queue_tickets"
    __table_args__ = (
        UniqueConstraint("facility_id", "day", "number", name="uq_sched_queue_tickets_number"),
        Index("ix_sched_queue_tickets_state", "facility_id", "day", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("registry_facilities.id"))
    day: Mapped[date] = mapped_column(Date)
    """The facility's local date."""
    number: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(String(12))
    """What the ticket and the hall display show, e.g. ``A-014``."""
    specialty: Mapped[str] = mapped_column(String(40))
    appointment_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_appointments.id"), nullable=True, unique=True
    )
    room: Mapped[str] = mapped_column(String(20), default="")
    status: Mapped[str] = mapped_column(String(12), default=TicketStatus.WAITING.value)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    called_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ScreeningEvent(Base):
    """A resident invited to, or screened in, a cancer-screening programme."""

    __tablename__ = "sched_screening_events"
    __table_args__ = (Index("ix_sched_screening_events_resident", "resident_id", "program", "on"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resident_id: Mapped[int] = mapped_column(
        ForeignKey("registry_residents.id", ondelete="CASCADE")
    )
    program: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(12))
    on: Mapped[date] = mapped_column(Date)
    appointment_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_appointments.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
