"""Coded values of the AI capability."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a study's analysis stands (``ai_studies.status``)."""

    QUEUED = "queued"
    """Waiting for a worker (a job is on the queue, or the sweep will put one there)."""
    RUNNING = "running"
    """Claimed by a worker that beats a heartbeat while it works."""
    DONE = "done"
    """Finished: a priority is set (``not_analysed`` with the reason when nothing could be)."""
    FAILED = "failed"
    """Given up after ``MAX_ATTEMPTS`` or a permanent error; listed in ``job_failures``."""


class Priority(StrEnum):
    """A study's place on the worklist (``rank``: higher first)."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    NOT_ANALYSED = "not_analysed"

    @property
    def rank(self) -> int:
        return {"high": 3, "medium": 2, "low": 1, "not_analysed": 0}[self.value]
