"""Scheduling: doctors' schedules and slots, appointments, live queues, screening eligibility,
and the FHIR R4 API over them (``qamqor.scheduling.fhir``).

``kiosk`` and ``contact`` use the service functions of ``qamqor.scheduling.service`` and
``qamqor.scheduling.screening``.
"""

from qamqor.scheduling.enums import AppointmentStatus, ScreeningState, SlotStatus, TicketStatus
from qamqor.scheduling.errors import (
    AppointmentNotFoundError,
    AppointmentStateError,
    ConflictingAppointmentError,
    SchedulingError,
    SlotNotFoundError,
    SlotTakenError,
)

__all__ = [
    "AppointmentNotFoundError",
    "AppointmentStateError",
    "AppointmentStatus",
    "ConflictingAppointmentError",
    "SchedulingError",
    "ScreeningState",
    "SlotNotFoundError",
    "SlotStatus",
    "SlotTakenError",
    "TicketStatus",
]
