"""Builds what a Qamqor process needs, once: settings, engine, storage, services."""

from __future__ import annotations

import gc
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


def tune_collector_for_serving() -> None:
    """Once a server process has started: what start-up built (modules, the app, the DICOM
    dictionary) lives as long as the process, so it goes out of the collector's sight
    (``gc.freeze``), and young objects are collected less often.

    Each full collection walked the whole start-up heap holding the interpreter lock (40-50
    ms), and with several associations storing at once collections took a sixth of a
    C-STORE's instructions: 2.71 M per C-STORE over 4 associations, 2.46 M frozen, 2.39 M
    with these thresholds, against 2.30 M over one (callgrind, in-process node, ``storescu``).
    """
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
