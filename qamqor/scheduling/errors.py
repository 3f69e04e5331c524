"""Errors of scheduling. Messages are English msgids, translated where they are shown.

Each error names its ``kind`` (``qamqor.core.errors.ErrorKind``), which the edges map to their
answers (``qamqor.http.errors``: the statuses the routers have always returned).
"""

from __future__ import annotations

from qamqor.core.errors import ConflictError, ErrorKind, NotFoundError, QamqorError


class SchedulingError(QamqorError):
    """Bad input or a rule of scheduling broken (HTTP 422)."""

    kind = ErrorKind.UNPROCESSABLE


class SlotNotFoundError(SchedulingError, NotFoundError):
    kind = ErrorKind.NOT_FOUND


class AppointmentNotFoundError(SchedulingError, NotFoundError):
    kind = ErrorKind.NOT_FOUND


class SlotTakenError(SchedulingError, ConflictError):
    """Someone else booked the slot first (or it is not bookable)."""

    kind = ErrorKind.CONFLICT


class ConflictingAppointmentError(SchedulingError, ConflictError):
    """The resident already has an appointment with this specialty at that time."""

    kind = ErrorKind.CONFLICT


class AppointmentStateError(SchedulingError, ConflictError):
    """The appointment cannot go to the asked state (e.g. cancel one in the past)."""

    kind = ErrorKind.CONFLICT
