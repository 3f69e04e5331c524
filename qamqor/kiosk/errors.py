"""Errors of the kiosk (messages are msgids, translated on the screen)."""

from __future__ import annotations

from qamqor.core.errors import QamqorError


class KioskError(QamqorError):
    http_status = 422


class CodeError(KioskError):
    """A one-time code that is wrong, expired or used up."""


class NoCodeSentError(KioskError):
    """No code is sent to this resident now (no phone on record, too many codes lately). The
    kiosk does not say so: it answers as for any IIN, registered or not."""


class SmsError(KioskError):
    """The SMS gateway did not take the message (a retry may help)."""

    http_status = 503
