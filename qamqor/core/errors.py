"""One base error for Qamqor; each capability subclasses it.

Errors are translated to HTTP, DIMSE statuses or CLI messages only at the edges.
Messages never contain patient data: they are shown to users and may reach logs.
"""

from __future__ import annotations


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

    http_status = 400

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class NotFoundError(QamqorError):
    http_status = 404


class PermissionDeniedError(QamqorError):
    http_status = 403


class AuthenticationError(QamqorError):
    http_status = 401
