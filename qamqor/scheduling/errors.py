"""Errors of scheduling. Messages are English msgids, translated where they are shown.

Each error names its ``kind`` (``qamqor.core.errors.ErrorKind``), which the edges map to their
answers; ``http_status`` is what the routers have always returned.
"""

from __future__ import annotations

from qamqor.core.errors import ConflictError, ErrorKind, NotFoundError, QamqorError


class SchedulingError(QamqorError):
    """Bad input or a rule of scheduling broken (HTTP 422)."""

    kind = ErrorKind.INVALID
    http_status = 422


class SlotNotFoundError(SchedulingError, NotFoundError):
    kind = ErrorKind.NOT_FOUND
    http_status = 404


class AppointmentNotFoundError(SchedulingError, NotFoundError):
    kind = ErrorKind.NOT_FOUND
    http_status = 404


class SlotTakenError(SchedulingError, ConflictError):
    """Someone else booked the slot first (or it is not bookable)."""

    kind = ErrorKind.CONFLICT
    http_status = 409


class ConflictingAppointmentError(SchedulingError, ConflictError):
    """The resident already has an appointment with this specialty at that time."""

    kind = ErrorKind.CONFLICT
    http_status = 409


class AppointmentStateError(SchedulingError, ConflictError):
    """The appointment cannot go to the asked state (e.g. cancel one in the past)."""

    kind = ErrorKind.CONFLICT
    http_status = 409
