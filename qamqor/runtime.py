"""Builds what a Qamqor process needs, once: settings, engine, storage, services."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from qamqor.core.db import (
    current_revision,
    head_revision,
    make_engine,
    make_session_factory,
    upgrade_database,
)
from qamqor.core.events import EventBus
from qamqor.core.settings import Settings
from qamqor.pacs.service import ArchiveService
from qamqor.pacs.storage import FileSystemStorage

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    archive: ArchiveService
    events: EventBus = field(default_factory=EventBus)

    def close(self) -> None:
        self.archive.close()
        self.engine.dispose()


def ensure_schema(settings: Settings, engine: Engine) -> None:
    """Bring the database up to date (a new embedded database is created on first use)."""
    url = settings.effective_database_url
    if current_revision(engine) != head_revision(url):
        upgrade_database(url)


def build_runtime(settings: Settings, *, migrate: bool = True, recover: bool = True) -> Runtime:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.effective_database_url)
    if migrate:
        ensure_schema(settings, engine)
    session_factory = make_session_factory(engine)
    events = EventBus()
    storage = FileSystemStorage(settings.storage_dir)
    archive = ArchiveService(session_factory=session_factory, storage=storage, events=events)
    if recover:
        report = archive.recover()
        if report.finished or report.discarded:
            logger.warning(
                "recovered interrupted stores: %d finished, %d discarded",
                report.finished,
                report.discarded,
            )
    return Runtime(settings, engine, session_factory, archive, events)
