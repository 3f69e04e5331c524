"""How many associations each DICOM acceptor process serves, in memory they all share.

Every acceptor process of ``qamqor serve`` waits in ``accept`` on the one listening socket
(``node._SharedSocketServer``); the kernel wakes them all and the first to ask gets the
connection. Eight associations arriving together were split 5 to 3 or 6 to 2 that way (seen
with ``ss -tnp`` during ``bench.store_throughput``): the busier process, with its one
interpreter lock, then sets the pace while the other core has work to spare (in that
benchmark the senders share the 2 cores, so the CPU was the limit either way; with senders on
other machines it is not). Now a process that serves more associations than the least busy
one leaves a waiting connection to that one; after ``DEFER_LIMIT`` it takes the connection
all the same, so a stuck or dead process delays a new association by that much at most (a
busy process was seen to take more than 50 ms to get to its ``accept``).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

#: Longest a busier process leaves a waiting connection to a less busy one.
DEFER_LIMIT = 0.25
#: Sleep between two looks while leaving a connection to another process.
_DEFER_STEP = 0.001


class AcceptorLoad:
    """The association counts of all acceptor processes; ``index`` is this process's."""

    def __init__(self, counts: Any, index: int) -> None:
        self._counts = counts  # a shared ctypes array of int, one per process
        self.index = index
        self._lock = threading.Lock()  # only this process writes its own count
        self._deferring_since = 0.0
        self._last_deferral = 0.0

    def __reduce__(self) -> tuple[Any, ...]:
        # To a spawned process: the shared counts and the index, with a lock of its own.
        return (AcceptorLoad, (self._counts, self.index))

    @classmethod
    def shared(cls, processes: int) -> AcceptorLoad:
        """Counts for ``processes`` acceptor processes, as seen by the first (index 0)."""
        counts = multiprocessing.get_context("spawn").Array("i", processes, lock=False)
        return cls(counts, 0)

    def for_process(self, index: int) -> AcceptorLoad:
        return AcceptorLoad(self._counts, index)

    def started(self) -> None:
        with self._lock:
            self._counts[self.index] += 1

    def ended(self) -> None:
        with self._lock:
            self._counts[self.index] -= 1

    def defer(self) -> bool:
        """True (after a short sleep) while a less busy process should take the waiting
        connection; False once this process should accept it."""
        counts = self._counts
        if counts[self.index] <= min(counts):
            self._deferring_since = 0.0
            return False
        now = time.monotonic()
        if now - self._last_deferral > 10 * _DEFER_STEP:  # a new waiting connection
            self._deferring_since = now
        self._last_deferral = now
        if now - self._deferring_since >= DEFER_LIMIT:
            self._deferring_since = 0.0
            return False
        time.sleep(_DEFER_STEP)
        return True
