"""Errors of the kiosk (messages are msgids, translated on the screen).

Each error names its ``kind`` (``qamqor.core.errors.ErrorKind``); ``qamqor.http.errors`` maps
it to what the kiosk's screens have always answered with.
"""

from __future__ import annotations

from qamqor.core.errors import ErrorKind, QamqorError


class KioskError(QamqorError):
    kind = ErrorKind.UNPROCESSABLE


class CodeError(KioskError):
    """A one-time code that is wrong, expired or used up."""

    kind = ErrorKind.UNPROCESSABLE


class NoCodeSentError(KioskError):
    """No code is sent to this resident now (no phone on record, too many codes lately). The
    kiosk does not say so: it answers as for any IIN, registered or not."""

    kind = ErrorKind.CONFLICT


class SmsError(KioskError):
    """The SMS gateway did not take the message (a retry may help)."""

    kind = ErrorKind.UNAVAILABLE

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message, permanent=permanent)
