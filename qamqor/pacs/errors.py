"""Errors of the archive; mapped to DIMSE statuses (by ``kind``: the DICOM node's
``failure_status``), STOW failure reasons and CLI lines."""

from __future__ import annotations

from qamqor.core.errors import ErrorKind, NotFoundError, QamqorError, UnavailableError


class PacsError(QamqorError):
    """Base of the archive's errors."""


class InvalidInstanceError(PacsError):
    """The data offered is not a storable DICOM instance (bad input: never retried).

    ``dimse_status`` is the C-STORE failure status to answer with (a refusal more precise
    than its kind's: SOP class not supported, data set does not match its SOP class).
    """

    kind = ErrorKind.INVALID

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


class StorageUnavailableError(UnavailableError, PacsError):
    """Storage or index could not take the instance (may succeed later)."""

    kind = ErrorKind.UNAVAILABLE


class InstanceNotFoundError(NotFoundError, PacsError):
    kind = ErrorKind.NOT_FOUND


class InvalidQueryError(PacsError):
    """A query (C-FIND, C-MOVE, C-GET identifier; QIDO-RS parameters) that cannot be run."""

    kind = ErrorKind.INVALID
