"""Errors of the registry. Messages are English msgids, translated where they are shown."""

from __future__ import annotations

from qamqor.core.errors import NotFoundError, QamqorError


class RegistryError(QamqorError):
    """Bad input or a rule of the registry broken (HTTP 400 / 422)."""

    http_status = 422


class InvalidIINError(RegistryError):
    """A string that is not a valid IIN."""


class ResidentNotFoundError(RegistryError, NotFoundError):
    http_status = 404


class FacilityNotFoundError(RegistryError, NotFoundError):
    http_status = 404


class FacilityClosedError(RegistryError):
    http_status = 409
