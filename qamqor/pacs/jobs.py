"""The archive's background work, attached by :func:`qamqor.capabilities.attach_jobs`: the
watcher that announces "study stable" (``qamqor.pacs.stability``)."""

from __future__ import annotations

from qamqor.core.jobs import JobQueue
from qamqor.pacs.stability import StableStudyWatcher
from qamqor.runtime import Runtime


def attach(runtime: Runtime, queue: JobQueue | None, *, sweep: bool = True) -> StableStudyWatcher:
    """Start the stable-study watcher of ``runtime``'s archive; ``stop()`` it at shutdown.

    It runs whatever ``sweep`` says: ``qamqor serve`` without job workers still announces
    studies (its listeners queue the AI's jobs for ``qamqor worker`` processes). Several
    processes may watch one database (each announcement is claimed by one of them). Its first
    look comes ``poll_seconds`` after the start, once every capability's listeners are
    attached (``attach_jobs`` attaches them one after the other, in no time).
    """
    del queue, sweep  # no jobs of its own; watching is not a sweep
    watcher = StableStudyWatcher(
        session_factory=runtime.session_factory,
        events=runtime.events,
        quiet_seconds=runtime.settings.study_stable_seconds,
    )
    watcher.start()
    return watcher
