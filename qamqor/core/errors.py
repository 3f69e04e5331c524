"""One base error for Qamqor; each capability subclasses it.

Errors are translated to HTTP, DIMSE statuses or CLI messages only at the edges.
Messages never contain patient data: they are shown to users and may reach logs.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """What kind of failure a domain error is; each edge maps a kind to its own answer
    (``qamqor.http.errors``: HTTP status; the DICOM node: DIMSE status; ``cli``: exit code)."""

    INVALID = "invalid"
    """The request is malformed; the same request fails again (HTTP 400)."""
    UNPROCESSABLE = "unprocessable"
    """Well-formed, but its values are wrong: an invalid IIN, a report missing a field (422)."""
    NOT_FOUND = "not_found"
    NOT_ACCEPTABLE = "not_acceptable"
    """None of the representations the caller accepts can be made (406)."""
    TOO_MANY_REQUESTS = "too_many_requests"
    """Refused for now because of how often it was tried (sign-in throttling, 429)."""
    CONFLICT = "conflict"
    """The request is right but the object's state forbids it now (claimed, signed, taken)."""
    FORBIDDEN = "forbidden"
    UNAUTHENTICATED = "unauthenticated"
    UNAVAILABLE = "unavailable"
    """A transient failure (storage, database, a gateway): retrying later may succeed."""


class QamqorError(Exception):
    """Base of every domain error.

    Parameters
    ----------
    message:
        What went wrong and what the user can do about it (no patient data).
    permanent:
        ``True`` when retrying the same operation cannot help (bad input);
        ``False`` for transient failures (storage or database unavailable).
    """

    kind: ErrorKind = ErrorKind.INVALID

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class NotFoundError(QamqorError):
    kind = ErrorKind.NOT_FOUND


class PermissionDeniedError(QamqorError):
    kind = ErrorKind.FORBIDDEN


class AuthenticationError(QamqorError):
    kind = ErrorKind.UNAUTHENTICATED


class ConflictError(QamqorError):
    kind = ErrorKind.CONFLICT


class UnavailableError(QamqorError):
    kind = ErrorKind.UNAVAILABLE

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


def redacted(exc: BaseException, *, frames: int = 3) -> str:
    """What an unexpected exception is, without its message: its type and where it was
    raised (the innermost ``frames`` frames, as file:line in function).

    Exception messages of the libraries that read DICOM quote what they could not read (a
    value's bytes, a name): never logged. The type and the code locations are enough to find
    the bug.
    """
    import os
    import traceback

    summary = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = "; ".join(
        f"{os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}"
        for frame in reversed(summary)
    )
    return f"{type(exc).__name__} at {where}" if where else type(exc).__name__


def is_panic(exc: BaseException) -> bool:
    """A Rust extension's panic (pyo3's ``PanicException``, a ``BaseException``): a decoder
    failing on bad input, to be handled as its error, not as an interpreter exit."""
    return type(exc).__name__ == "PanicException"
