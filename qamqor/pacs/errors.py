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
        self.sop_class_uid = ""
        self.sop_instance_uid = ""
        """The UIDs of the refused instance, where its file meta header gave them."""

    def naming(self, sop_class_uid: str, sop_instance_uid: str) -> InvalidInstanceError:
        """This error, with the UIDs of the instance it refuses (if not set already)."""
        self.sop_class_uid = self.sop_class_uid or sop_class_uid
        self.sop_instance_uid = self.sop_instance_uid or sop_instance_uid
        return self


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
