"""More DICOM acceptor processes on the same port, one per CPU core.

pynetdicom is pure Python: one process stores on one core at a time. ``qamqor serve`` starts
``dicom_processes - 1`` extra processes that serve the DICOM port's listening socket too (each
takes the next association when it is free, see ``node._SharedSocketServer``), so concurrent
associations are served on every core. They share the database and the storage
with the main process; the main process alone runs start-up recovery, HTTP and the jobs. An
extra process dies with its parent (even after a ``kill -9``), so no stray listener stays on
the port. All of them count their associations in shared memory and leave a new one to the
least busy (``qamqor.pacs.dimse.load``).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as ProcessEvent
from typing import Any

from qamqor.core.settings import Settings
from qamqor.pacs.dimse.load import AcceptorLoad

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def effective_process_count(settings: Settings) -> int:
    if settings.dicom_port == 0:
        return 1  # an ephemeral port: tests and tools, where one process is enough
    if settings.dicom_processes:
        return settings.dicom_processes
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _acceptor_main(
    settings_values: dict[str, Any],
    parent_pid: int,
    listening: ProcessEvent,
    listening_socket: socket.socket,
    load: AcceptorLoad | None,
) -> None:
    """Entry point of an extra acceptor process."""
    _die_with_parent(parent_pid)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[acceptor]: %(message)s"
    )
    from qamqor.core.runtime import open_runtime, tune_collector_for_serving
    from qamqor.pacs import startup
    from qamqor.pacs.dimse.node import DicomNode

    settings = Settings(**settings_values)
    # The main process migrated the database and recovered interrupted stores.
    runtime = open_runtime(settings)
    archive = startup.start(runtime, recover=False)
    node = DicomNode(
        settings=settings, archive=archive, listening_socket=listening_socket, load=load
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    node.start()
    tune_collector_for_serving()
    listening.set()
    stop.wait()
    node.stop()
    runtime.close()


class AcceptorProcesses:
    """The extra acceptor processes of one ``qamqor serve``."""

    def __init__(
        self,
        settings: Settings,
        count: int,
        listening_socket: socket.socket | None,
        load: AcceptorLoad | None = None,
    ) -> None:
        """``load``: the counts of all acceptor processes, the main one's at index 0; these
        take indexes 1 to ``count``."""
        self.settings = settings
        self.count = count
        self.listening_socket = listening_socket
        self.load = load
        self._processes: list[BaseProcess] = []

    def start(self, timeout: float = 120.0) -> None:
        """Start the processes; returns once each listens (or has failed, or ``timeout``).

        Associations opened while a process is still starting (seconds: imports, engine) go
        to the processes already serving, and stay there for their whole life.
        """
        if self.count and self.listening_socket is None:
            raise ValueError("acceptor processes need the node's listening socket")
        context = multiprocessing.get_context("spawn")
        values = self.settings.model_dump()
        listening: list[ProcessEvent] = []
        for index in range(self.count):
            ready = context.Event()
            process = context.Process(
                target=_acceptor_main,
                args=(
                    values,
                    os.getpid(),
                    ready,
                    self.listening_socket,
                    self.load.for_process(index + 1) if self.load is not None else None,
                ),
                name=f"qamqor-dicom-{index + 1}",
                daemon=True,
            )
            process.start()
            self._processes.append(process)
            listening.append(ready)
        deadline = time.monotonic() + timeout
        for ready, started in zip(listening, self._processes, strict=True):
            while not ready.wait(0.1):
                if not started.is_alive() or time.monotonic() > deadline:
                    logger.warning("DICOM acceptor process %s is not listening", started.name)
                    break
        if self.count:
            logger.info("%d more DICOM acceptor processes share the port", self.count)

    def stop(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        self._processes.clear()
