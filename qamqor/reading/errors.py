"""Errors of the reading capability (messages carry no patient data)."""

from __future__ import annotations

from qamqor.core.errors import NotFoundError, QamqorError


class ReadingError(QamqorError):
    """Base of the reading capability's errors."""


class StudyNotFoundError(NotFoundError, ReadingError):
    pass


class ReportNotFoundError(NotFoundError, ReadingError):
    pass


class StudyClaimedError(ReadingError):
    """Another radiologist holds the study."""

    http_status = 409

    def __init__(self, username: str) -> None:
        super().__init__(f"the study is being read by {username}")
        self.username = username


class ReportSignedError(ReadingError):
    """A signed report is never changed; amend it with a new version."""

    http_status = 409


class InvalidReportError(ReadingError):
    """The report's content is incomplete or wrong (bad input)."""

    http_status = 422
