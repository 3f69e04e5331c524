"""Errors of the AI capability; turned into job failures, HTTP answers or CLI lines at the edge."""

from __future__ import annotations

from qamqor.core.errors import ErrorKind, NotFoundError, QamqorError
from qamqor.core.i18n import Message


class AIError(QamqorError):
    """Base of the AI capability's errors (each says its :class:`ErrorKind`)."""

    kind = ErrorKind.INVALID


class InvalidBundleError(AIError):
    """A model bundle that cannot be used: unreadable, bad manifest, or weights that do not match
    the checksum in its manifest (bad input: retrying cannot help)."""

    kind = ErrorKind.INVALID

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class BundleNotFoundError(NotFoundError, AIError):
    """No installed bundle of that name or version."""

    kind = ErrorKind.NOT_FOUND


class UnanalysableImageError(AIError):
    """An image the analyser cannot read: wrong shape, non-finite pixels, missing laterality.

    The study is marked "not analysed" with ``reason``, shown in the reader's language;
    retrying cannot help.
    """

    kind = ErrorKind.INVALID

    def __init__(self, reason: Message) -> None:
        super().__init__(reason.english(), permanent=True)
        self.reason = reason
