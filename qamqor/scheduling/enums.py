"""Coded values of scheduling (aligned with FHIR R4 value sets where one exists)."""

from __future__ import annotations

from enum import StrEnum


class SlotStatus(StrEnum):
    """FHIR ``slotstatus``: free, busy, busy-unavailable."""

    FREE = "free"
    BUSY = "busy"
    BLOCKED = "busy-unavailable"


class AppointmentStatus(StrEnum):
    """FHIR ``appointmentstatus`` (the subset used here)."""

    BOOKED = "booked"
    ARRIVED = "arrived"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    NOSHOW = "noshow"


#: Appointments that hold their slot.
ACTIVE_APPOINTMENT_STATUSES = (
    AppointmentStatus.BOOKED,
    AppointmentStatus.ARRIVED,
    AppointmentStatus.FULFILLED,
)
#: Appointments still to come (until their end): a resident holds one per specialty.
UPCOMING_APPOINTMENT_STATUSES = (AppointmentStatus.BOOKED, AppointmentStatus.ARRIVED)


class TicketStatus(StrEnum):
    WAITING = "waiting"
    CALLED = "called"
    SERVED = "served"
    MISSED = "missed"


class ScreeningEventKind(StrEnum):
    INVITED = "invited"
    SCREENED = "screened"


class ScreeningState(StrEnum):
    """Where a resident stands with one screening programme."""

    DUE = "due"
    INVITED = "invited"
    SCREENED = "screened"
    """Screened within the programme's interval: not due yet."""
