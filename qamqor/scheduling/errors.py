"""Errors of scheduling. Messages are English msgids, translated where they are shown."""

from __future__ import annotations

from qamqor.core.errors import QamqorError


class SchedulingError(QamqorError):
    http_status = 422


class SlotNotFoundError(SchedulingError):
    http_status = 404


class AppointmentNotFoundError(SchedulingError):
    http_status = 404


class SlotTakenError(SchedulingError):
    """Someone else booked the slot first (or it is not bookable)."""

    http_status = 409


class ConflictingAppointmentError(SchedulingError):
    """The resident already has an appointment with this specialty at that time."""

    http_status = 409


class AppointmentStateError(SchedulingError):
    """The appointment cannot go to the asked state (e.g. cancel one in the past)."""

    http_status = 409
