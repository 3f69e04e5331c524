"""Errors of the reading capability (messages carry no patient data).

Each says its :class:`~qamqor.core.errors.ErrorKind`; ``qamqor.http.errors`` maps it to the
status the pages have always answered.
"""

from __future__ import annotations

from qamqor.core.errors import ConflictError, ErrorKind, NotFoundError, QamqorError


class ReadingError(QamqorError):
    """Base of the reading capability's errors."""


class StudyNotFoundError(NotFoundError, ReadingError):
    kind = ErrorKind.NOT_FOUND


class ReportNotFoundError(NotFoundError, ReadingError):
    kind = ErrorKind.NOT_FOUND


class StudyClaimedError(ConflictError, ReadingError):
    """Another radiologist holds the study."""

    kind = ErrorKind.CONFLICT

    def __init__(self, username: str) -> None:
        super().__init__(f"the study is being read by {username}")
        self.username = username


class ReportSignedError(ConflictError, ReadingError):
    """A signed report is never changed; amend it with a new version."""

    kind = ErrorKind.CONFLICT


class InvalidReportError(ReadingError):
    """The report's content is incomplete or wrong (bad input)."""

    kind = ErrorKind.UNPROCESSABLE
