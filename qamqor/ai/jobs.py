"""The AI capability's jobs and listeners, attached by :func:`qamqor.capabilities.attach_jobs`."""

from __future__ import annotations

from qamqor.ai.pipeline import AIPipeline
from qamqor.ai.registry import ModelStore
from qamqor.core.jobs import JobQueue
from qamqor.core.runtime import Runtime
from qamqor.pacs import STUDY_STABLE, ArchiveService


def attach(runtime: Runtime, queue: JobQueue | None, *, sweep: bool = True) -> AIPipeline:
    """Register the analysis job on ``queue``, listen for stable studies, start the sweep.

    ``sweep`` is for processes that run workers (``qamqor serve``, ``qamqor worker``).
    """
    settings = runtime.settings
    pipeline = AIPipeline(
        session_factory=runtime.session_factory,
        archive=runtime.get(ArchiveService),
        models=ModelStore(settings.data_dir / "models", threads=settings.ai_threads),
        queue=queue,
        stale_seconds=settings.ai_stale_seconds,
        events=runtime.events,
    )
    runtime.events.subscribe(STUDY_STABLE, pipeline.on_study_stable)
    if sweep:
        pipeline.start_sweeper()
    return pipeline
