"""Errors of the archive; mapped to DIMSE statuses, STOW failure reasons and CLI lines."""

from __future__ import annotations

from qamqor.core.errors import NotFoundError, QamqorError


class PacsError(QamqorError):
    """Base of the archive's errors."""


class InvalidInstanceError(PacsError):
    """The data offered is not a storable DICOM instance (bad input: never retried).

    ``dimse_status`` is the C-STORE failure status to answer with.
    """

    http_status = 400

    def __init__(self, message: str, *, dimse_status: int = 0xC000) -> None:
        super().__init__(message, permanent=True)
        self.dimse_status = dimse_status


class UnsupportedSopClassError(InvalidInstanceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, dimse_status=0x0122)


class StorageUnavailableError(PacsError):
    """Storage or index could not take the instance (may succeed later)."""

    http_status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


class InstanceNotFoundError(NotFoundError, PacsError):
    pass


class InvalidQueryError(PacsError):
    http_status = 400
