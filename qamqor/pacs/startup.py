"""The archive's start: registered as ``pacs``'s ``startup`` capability hook."""

from __future__ import annotations

import logging

from qamqor.core.runtime import Runtime
from qamqor.pacs.render_cache import RenderCache
from qamqor.pacs.service import ArchiveService
from qamqor.pacs.storage import FileSystemStorage

logger = logging.getLogger(__name__)


def start(runtime: Runtime, *, recover: bool = True) -> ArchiveService:
    """Open the archive on the settings' storage and register it with ``runtime``.

    ``recover``: first finish or discard the stores a crash interrupted (only the process
    that owns the archive does this, never the extra DICOM acceptor processes).
    """
    storage = FileSystemStorage(runtime.settings.storage_dir)
    archive = ArchiveService(
        session_factory=runtime.session_factory, storage=storage, events=runtime.events
    )
    if recover:
        report = archive.recover()
        if report.finished or report.discarded:
            logger.warning(
                "recovered interrupted stores: %d finished, %d discarded",
                report.finished,
                report.discarded,
            )
    runtime.provide(archive)
    settings = runtime.settings
    runtime.provide(
        RenderCache(settings.render_cache_dir, max_bytes=settings.render_cache_max_mb << 20)
    )
    return archive
