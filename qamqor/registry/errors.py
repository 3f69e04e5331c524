"""Errors of the registry. Messages are English msgids, translated where they are shown.

Each error names its ``kind`` (``qamqor.core.errors.ErrorKind``), which the edges map to their
answers (``qamqor.http.errors``: the statuses the routers have always returned).
"""

from __future__ import annotations

from qamqor.core.errors import ConflictError, ErrorKind, NotFoundError, QamqorError


class RegistryError(QamqorError):
    """Bad input or a rule of the registry broken (HTTP 400 / 422)."""

    kind = ErrorKind.UNPROCESSABLE


class InvalidIINError(RegistryError):
    """A string that is not a valid IIN."""


class ResidentNotFoundError(RegistryError, NotFoundError):
    kind = ErrorKind.NOT_FOUND


class FacilityNotFoundError(RegistryError, NotFoundError):
    kind = ErrorKind.NOT_FOUND


class FacilityClosedError(RegistryError, ConflictError):
    """Nothing new can be booked or attached at a closed facility."""

    kind = ErrorKind.CONFLICT
