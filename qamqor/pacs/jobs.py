"""The archive's background work, attached by :func:`qamqor.capabilities.attach_jobs`: the
watcher that announces "study stable" (``qamqor.pacs.stability``), and the decoding of stable
studies' images ahead for the viewer (``qamqor.pacs.prefetch``)."""

from __future__ import annotations

from dataclasses import dataclass

from qamqor.core.jobs import JobQueue
from qamqor.core.runtime import Runtime
from qamqor.pacs.prefetch import Prerenderer
from qamqor.pacs.render_cache import RenderCache
from qamqor.pacs.service import ArchiveService
from qamqor.pacs.stability import STUDY_STABLE, StableStudyWatcher


@dataclass
class ArchiveWork:
    watcher: StableStudyWatcher
    prerenderer: Prerenderer | None

    def stop(self) -> None:
        self.watcher.stop()
        if self.prerenderer is not None:
            self.prerenderer.stop()


def attach(runtime: Runtime, queue: JobQueue | None, *, sweep: bool = True) -> ArchiveWork:
    """Start the stable-study watcher of ``runtime``'s archive; ``stop()`` it at shutdown.

    It runs whatever ``sweep`` says: ``qamqor serve`` without job workers still announces
    studies (its listeners queue the AI's jobs for ``qamqor worker`` processes). Several
    processes may watch one database (each announcement is claimed by one of them). Its first
    look comes ``poll_seconds`` after the start, once every capability's listeners are
    attached (``attach_jobs`` attaches them one after the other, in no time).
    """
    del queue  # no jobs of its own; watching is not a sweep
    prerenderer = None
    if sweep and runtime.settings.render_cache_max_mb:
        # Processes that do the work (serve, worker) decode stable studies ahead.
        prerenderer = Prerenderer(
            runtime.session_factory,
            runtime.get(ArchiveService).storage,
            runtime.get(RenderCache),
        )
        runtime.events.subscribe(STUDY_STABLE, prerenderer.on_study_stable)
        prerenderer.start()
    watcher = StableStudyWatcher(
        session_factory=runtime.session_factory,
        events=runtime.events,
        quiet_seconds=runtime.settings.study_stable_seconds,
    )
    watcher.start()
    return ArchiveWork(watcher, prerenderer)
