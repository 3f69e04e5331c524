"""``qamqor serve``: HTTP and the DICOM node in one process."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import uvicorn

from qamqor.core.settings import Settings
from qamqor.runtime import build_runtime, tune_collector_for_serving

logger = logging.getLogger(__name__)


def run_server(settings: Settings) -> None:
    from qamqor.capabilities import attach_jobs
    from qamqor.core.jobs import JobQueue, make_huey
    from qamqor.pacs.dimse import DicomNode
    from qamqor.pacs.dimse.load import AcceptorLoad, AssociationLimits
    from qamqor.pacs.dimse.processes import AcceptorProcesses, effective_process_count
    from qamqor.web.app import create_app

    # A stop signal that comes while the parts start (before uvicorn takes the signals over)
    # is kept and stops the server as soon as it runs.
    stop_requested = threading.Event()
    web: list[uvicorn.Server] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()
        for server in web:
            server.handle_exit(signum, frame)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)

    runtime = build_runtime(settings)  # recovery of interrupted stores happens here, first
    queue = JobQueue(huey=make_huey(settings), session_factory=runtime.session_factory)
    # Listeners and jobs first (the stable-study watcher among them: qamqor.pacs.jobs), then
    # workers (SQLite by default, or Redis).
    attached = attach_jobs(runtime, queue, sweep=settings.job_workers > 0)
    queue.start_workers(settings.job_workers)
    processes = effective_process_count(settings)
    slots = AssociationLimits.slots_for(settings.dicom_max_associations)
    load = AcceptorLoad.shared(processes, slots) if processes > 1 else None
    node = DicomNode(settings=settings, archive=runtime.archive, load=load)
    node.start()
    shared = node.shared_socket() if processes > 1 else None
    acceptors = AcceptorProcesses(settings, processes - 1, shared, load)
    acceptors.start()
    logger.info(
        "DICOM node %s listening on port %d; HTTP on %s:%d",
        settings.dicom_ae_title,
        settings.dicom_port,
        settings.http_host,
        settings.http_port,
    )
    app = create_app(runtime)
    tune_collector_for_serving()
    try:
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_level="info",
            access_log=False,
        )
        web.append(uvicorn.Server(config))
        if stop_requested.is_set():
            web[0].should_exit = True
        web[0].run()
    finally:
        queue.stop_workers()
        for part in attached:
            part.stop()
        acceptors.stop()
        node.stop()
        runtime.close()
