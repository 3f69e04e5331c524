"""Builds what a Qamqor process needs, once: settings, engine, and every part's services.

The top layer: it knows the parts through ``qamqor.capabilities``. Parts themselves take
``qamqor.core.runtime.Runtime``.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from qamqor import capabilities
from qamqor.core.db import (
    current_revision,
    head_revision,
    make_engine,
    make_session_factory,
    upgrade_database,
)
from qamqor.core.runtime import Runtime as CoreRuntime
from qamqor.core.runtime import tune_collector_for_serving
from qamqor.core.settings import Settings
from qamqor.pacs import ArchiveService

__all__ = ["Runtime", "build_runtime", "ensure_schema", "tune_collector_for_serving"]


class Runtime(CoreRuntime):
    """The assembled runtime; ``archive`` names the service scripts and tests use most."""

    @property
    def archive(self) -> ArchiveService:
        return self.get(ArchiveService)


def ensure_schema(settings: Settings, engine: Engine) -> None:
    """Bring the database up to date (a new embedded database is created on first use)."""
    url = settings.effective_database_url
    locations = capabilities.migration_dirs()
    if current_revision(engine) != head_revision(url, locations):
        upgrade_database(url, locations)


def build_runtime(settings: Settings, *, migrate: bool = True, recover: bool = True) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    if migrate:
        ensure_schema(settings, engine)
    runtime = Runtime(settings, engine, make_session_factory(engine))
    capabilities.start_services(runtime, recover=recover)
    return runtime
