"""``qamqor serve``: HTTP and the DICOM node in one process."""

from __future__ import annotations

import logging

import uvicorn

from qamqor.core.settings import Settings
from qamqor.pacs.stability import StableStudyWatcher
from qamqor.runtime import build_runtime

logger = logging.getLogger(__name__)


def run_server(settings: Settings) -> None:
    from qamqor.pacs.dimse import DicomNode
    from qamqor.web.app import create_app

    runtime = build_runtime(settings)
    node = DicomNode(settings=settings, archive=runtime.archive)
    node.start()
    watcher = StableStudyWatcher(
        session_factory=runtime.session_factory,
        events=runtime.events,
        quiet_seconds=settings.study_stable_seconds,
    )
    watcher.start()
    logger.info(
        "DICOM node %s listening on port %d; HTTP on %s:%d",
        settings.dicom_ae_title,
        settings.dicom_port,
        settings.http_host,
        settings.http_port,
    )
    try:
        config = uvicorn.Config(
            create_app(runtime),
            host=settings.http_host,
            port=settings.http_port,
            log_level="info",
            access_log=False,
        )
        uvicorn.Server(config).run()
    finally:
        watcher.stop()
        node.stop()
        runtime.close()
