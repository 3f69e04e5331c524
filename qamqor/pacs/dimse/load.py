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

The same memory holds, for each open connection, a key of the peer's IP address (a slot per
connection, each process writing only its own slots), so that the limits on associations
(``dicom_max_associations`` in all, ``dicom_max_associations_per_peer`` from one address) hold
for all the processes together, not for each: ``AssociationLimits``. A connection counts from
``accept`` until its association thread ends.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import multiprocessing
import threading
import time
from typing import Any

#: Longest a busier process leaves a waiting connection to a less busy one.
DEFER_LIMIT = 0.25
#: Sleep between two looks while leaving a connection to another process.
_DEFER_STEP = 0.001


def peer_key(address: str) -> int:
    """A non-zero 64-bit key of an IP address, the same in every process (``hash`` is not);
    an IPv4 address and its IPv4-mapped IPv6 form are one peer."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
            parsed = parsed.ipv4_mapped
        text = str(parsed)
    except ValueError:
        text = address
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


class AcceptorLoad:
    """The connections of all acceptor processes: how many each holds, and from where;
    ``index`` is this process's."""

    def __init__(self, counts: Any, peers: Any, index: int, slots: int) -> None:
        self._counts = counts  # a shared ctypes array of int, one per process
        self._peers = peers  # a shared ctypes array of int64: ``slots`` per process, 0 = free
        self.index = index
        self.slots = slots
        self._lock = threading.Lock()  # only this process writes its own count and slots
        self._deferring_since = 0.0
        self._last_deferral = 0.0

    def __reduce__(self) -> tuple[Any, ...]:
        # To a spawned process: the shared arrays and the index, with a lock of its own.
        return (AcceptorLoad, (self._counts, self._peers, self.index, self.slots))

    @classmethod
    def shared(cls, processes: int, slots: int) -> AcceptorLoad:
        """Counts for ``processes`` acceptor processes holding at most ``slots`` connections
        each, as seen by the first (index 0)."""
        context = multiprocessing.get_context("spawn")
        counts = context.Array("i", processes, lock=False)
        peers = context.Array("q", processes * slots, lock=False)
        return cls(counts, peers, 0, slots)

    @classmethod
    def local(cls, slots: int) -> AcceptorLoad:
        """Counts for a single acceptor process (nothing shared)."""
        return cls((ctypes.c_int * 1)(), (ctypes.c_int64 * slots)(), 0, slots)

    def for_process(self, index: int) -> AcceptorLoad:
        return AcceptorLoad(self._counts, self._peers, index, self.slots)

    def started(self, peer: str) -> int | None:
        """Count a new connection from ``peer``: its slot, for ``ended``, or None when this
        process holds as many as it may (the connection is then not counted)."""
        key = peer_key(peer)
        peers = self._peers
        first = self.index * self.slots
        with self._lock:
            for slot in range(first, first + self.slots):
                if not peers[slot]:
                    peers[slot] = key
                    self._counts[self.index] += 1
                    return slot
        return None

    def ended(self, slot: int) -> None:
        with self._lock:
            if self._peers[slot]:
                self._peers[slot] = 0
                self._counts[self.index] -= 1

    def total(self) -> int:
        """Connections open in all the processes."""
        return sum(self._counts)

    def from_peer(self, peer: str) -> int:
        """Connections open from ``peer``'s address in all the processes."""
        keys: list[int] = self._peers[:]
        return keys.count(peer_key(peer))

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


#: A-ASSOCIATE-RJ for too many associations: transient, by the service provider (presentation
#: related), local limit exceeded (PS3.8 9.3.4), as pynetdicom rejects beyond its maximum.
REJECT_BUSY = (0x02, 0x03, 0x02)


class AssociationLimits:
    """The association limits of the settings, over the connections of ``load``.

    Connections are counted from ``accept`` (``AcceptorLoad.started``): an association being
    requested counts itself. Beyond twice the limits a connection is closed as soon as it is
    accepted, before anything is read from it (``connection_refusal``); up to that it is read
    and its association rejected (``association_refusal``), which a peer reports and retries
    later.
    """

    def __init__(self, load: AcceptorLoad, total: int, per_peer: int) -> None:
        self.load = load
        self.total = total
        self.per_peer = per_peer

    @staticmethod
    def slots_for(total: int) -> int:
        """Connection slots each process needs (one process may hold them all)."""
        return 2 * total

    def association_refusal(self, peer: str) -> str | None:
        """Why an association requested from ``peer`` must be rejected, or None."""
        total = self.load.total()
        if total > self.total:
            return f"{total} connections open, at most {self.total} associations"
        from_peer = self.load.from_peer(peer)
        if from_peer > self.per_peer:
            return f"{from_peer} connections from it, at most {self.per_peer} associations"
        return None

    def connection_refusal(self, peer: str) -> str | None:
        """Why a connection just accepted from ``peer`` must be closed at once, or None."""
        total = self.load.total()
        if total > 2 * self.total:
            return f"{total} connections open, at most {2 * self.total}"
        from_peer = self.load.from_peer(peer)
        if from_peer > 2 * self.per_peer:
            return f"{from_peer} connections from it, at most {2 * self.per_peer}"
        return None
