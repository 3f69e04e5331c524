"""The DIMSE fast path: the acceptor's associations on pynetdicom 3.0.4's internals.

Everything in Qamqor that reaches into pynetdicom's internals for speed is here, and only here.
It was written against pynetdicom 3.0.4 and is used only with exactly that version
(``WRITTEN_FOR``), and only where the setting ``dicom_fast_path`` (``QAMQOR_DICOM_FAST_PATH``)
is ``auto``, the default (``unavailable``). With any other version, or ``off``, the node serves
with pynetdicom's own reactors and event handlers: the plain path, slower (``bench/README.md``)
and otherwise the same. Exactly 3.0.4 and not any 3.0.x: the reactors below are copies of
3.0.4's loops, and a patch release that fixed one of them (say the pause race worked around
below) would have its fix silently undone by the copy; a version is added after the check
below, not assumed. pyproject pins ``pynetdicom>=3.0.4,<3.1``.

On both paths, whatever the version, every acceptor association is guarded (``guard``): PDU
lengths bounded before they are read, the association limits, and, in ``node``, known-AE
address checks, permissions and TLS. The fast path builds on the guard (its DUL provider is a
``guard.BoundedDUL``) and never replaces it.

What it does (each measured with ``bench.store_throughput`` / ``bench.store_profile``):

* Event-driven reactors (``_EventDrivenDUL``, ``_EventDrivenAssociation``). pynetdicom 3.0
  runs two threads per association that poll: the DUL thread sleeps 1 ms between looks at its
  socket and queues (``DULServiceProvider.run_reactor``), the association thread 1 ms between
  looks at its DIMSE queue (``Association._run_reactor``). 8 idle associations kept ``qamqor
  serve`` at 47 % of a core, and while storing they took most of the CPU of an instance over 8
  associations; each store also waited up to a millisecond at each of three hand-overs. The
  copies wait instead: the DUL thread in ``select`` on its socket and a wake-up socket that
  every queued primitive writes to, the association thread on an event set whenever a message
  is queued for it; every wait ends after ``_IDLE_WAIT`` as well, so a missed wake-up costs
  latency, never a hang, and the timers are looked at as before. A PDU is read into one
  buffer (pynetdicom reads 4 KiB at a time), and a P-DATA-TF of an established association
  goes to DIMSE at once, as the state machine's DT-2 would hand it over.
* C-STORE requests served in the DUL thread (``_AcceptorDIMSE``, ``read_store_request``):
  no DIMSE message object, queue, thread switch, pydicom decoding of the command set,
  primitive, service class and event per store.
* C-STORE responses encoded directly (``store_response_command``) and sent from the DUL
  thread as DT-1 would (``_EventDrivenDUL.send_command_now``).
* The server's presentation contexts shared by its associations (``share_contexts``): not
  deep-copied (23 ms of CPU) for every association.
* No ``gc.collect()`` of the whole process every 60th turn of the server's loop
  (``node._NodeServer.service_actions`` asks ``DicomNode.fast_path``): 40-50 ms holding the
  interpreter lock, which stalled every association of the process.

And one fix of a pynetdicom 3.0.4 race, not for speed (``leave_responses_to_sender``): it
applies with pynetdicom 3.0.4 whatever the setting (turning the fast path off must not bring
the bug back), and not with other versions, whose reactors it knows nothing of.

pynetdicom internals used (besides the guard's, listed in ``guard``):

* ``DULServiceProvider``: ``run_reactor`` (replaced by a copy), ``stop_dul`` and ``kill_dul``
  (extended), ``_process_recv_primitive``, ``_is_transport_event``, ``_kill_thread``,
  ``_run_loop_delay``, ``_idle_timer``, ``artim_timer``, ``event_queue``,
  ``to_provider_queue`` and ``to_user_queue`` (replaced by waking queues), ``state_machine``,
  ``_decode_pdu``, ``_recv_pdu``; the DT-1 and DT-2 actions (mirrored); ``Association._dul_ready``.
* ``Association``: ``_run_reactor`` (replaced by a copy), ``kill`` (extended), ``_kill``,
  ``_is_paused``, ``_reactor_checkpoint``, ``_serve_request``, ``_accepted_cx``,
  ``_sent_release``; the class of a live association swapped (``_EventDrivenAssociation``).
* ``DIMSEServiceProvider``: the class of a live provider swapped (``_AcceptorDIMSE``);
  ``message`` (the message being received), ``msg_queue`` (replaced), ``receive_primitive``,
  ``send_msg``, ``get_msg``, ``maximum_pdu_size``; ``_config.STORE_RECV_CHUNKED_DATASET``.
* ``RequestHandler._create_association`` deep-copies ``AssociationServer.contexts``;
  ``presentation.negotiate_as_acceptor`` only reads them; ``AssociationServer.
  service_actions`` only collects garbage.
* ``Association.send_c_store`` reads its response with ``dimse.get_msg(block=True)``, the
  reactor with ``get_msg(block=False)`` (the race fix).

How to check it against a new pynetdicom release X:

1. In a scratch virtual environment: ``pip install -e . pynetdicom==X``, then
   ``python -m qamqor.pacs.dimse.release_check``. It lists the guard's missing internals (the
   node refuses to start with any), and every function in ``FINGERPRINTS`` and
   ``guard.FINGERPRINTS`` that X lacks or changed.
2. For each changed one, diff 3.0.4's source with X's and carry the change into the copy here
   (or in ``guard``), or drop what X no longer needs; check the internals listed above in X.
3. Set ``WRITTEN_FOR`` (here and in ``guard``) to X and the fingerprints to those that
   ``python -m qamqor.pacs.dimse.release_check --fingerprints`` prints; move the pin in
   pyproject and the version named in the README's archive section.
4. Run ``tests/pacs/test_dimse*.py``, ``test_acceptor_processes.py``, ``test_crash_*.py`` and
   ``test_store_groups.py`` (each runs on both paths) and ``bench.store_throughput`` before and
   after.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pynetdicom
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import ThreadedAssociationServer

from qamqor.pacs.dimse import guard
from qamqor.pacs.dimse.contexts import storage_sop_classes
from qamqor.pacs.dimse.guard import MAX_PDU_SIZE, AcceptorAssociation, BoundedDUL
from qamqor.pacs.dimse.handlers import DimseHandlers
from qamqor.pacs.dimse.load import AcceptorLoad

if TYPE_CHECKING:
    from pynetdicom.transport import AssociationSocket

# The loggers pynetdicom's own loops write to (the copies below write to the same).
_dul_logger = logging.getLogger("pynetdicom.dul")
_assoc_logger = logging.getLogger("pynetdicom.association")
_dimse_logger = logging.getLogger("pynetdicom.dimse")

#: The one pynetdicom release the fast path is used with.
WRITTEN_FOR = "3.0.4"
#: SHA-256 (first 16 hex digits) of the source of each pynetdicom 3.0.4 function the fast path
#: copies, extends, mirrors or relies on (``guard.fingerprint``); the guard has its own.
FINGERPRINTS = {
    "dul.DULServiceProvider.__init__": "c82dafa9438ddf70",
    "dul.DULServiceProvider.run_reactor": "e3a10eb3a0931e48",
    "dul.DULServiceProvider.stop_dul": "28a7e0be126e7b30",
    "dul.DULServiceProvider.kill_dul": "5ceccf8dd01c2072",
    "dul.DULServiceProvider._process_recv_primitive": "4c0ebbb3e646e35e",
    "fsm.DT_1": "82e5c5d4114534fa",
    "fsm.DT_2": "9ec543394e0b49eb",
    "association.Association._run_reactor": "f28838c5559e462a",
    "association.Association.kill": "8f9713666a7f4cff",
    "association.Association._serve_request": "2f24c1759cdf6c8c",
    "association.Association.send_c_store": "fa5a8127f349f8e7",
    "dimse.DIMSEServiceProvider.__init__": "bbecd186810e7700",
    "dimse.DIMSEServiceProvider.receive_primitive": "5f99c86b14a15cef",
    "dimse.DIMSEServiceProvider.send_msg": "a839cf2fb46976d9",
    "dimse.DIMSEServiceProvider.get_msg": "890e3e04283f5aeb",
    "presentation.negotiate_as_acceptor": "d5413f08f0ac7b32",
    "transport.AssociationServer.service_actions": "0a0853a3615ac7c5",
}
#: What the race fix relies on (``leave_responses_to_sender``).
_RACE_FUNCTIONS = (
    "association.Association._run_reactor",
    "association.Association.send_c_store",
    "dimse.DIMSEServiceProvider.get_msg",
)


def unavailable(setting: str) -> str | None:
    """Why the node may not take the fast path with ``setting`` (``dicom_fast_path``) and the
    installed pynetdicom; None where it may."""
    if setting == "off":
        return "QAMQOR_DICOM_FAST_PATH is off"
    version = pynetdicom.__version__
    if version != WRITTEN_FOR:
        return f"pynetdicom {version} is not {WRITTEN_FOR}, the release it was written against"
    changed = guard.changed_functions({**guard.FINGERPRINTS, **FINGERPRINTS})
    if changed:
        return f"pynetdicom {version}'s {', '.join(changed)} differ from the release's"
    return None


def race_fix_applies() -> bool:
    """Whether ``leave_responses_to_sender`` is for the installed pynetdicom (3.0.4)."""
    return pynetdicom.__version__ == WRITTEN_FOR and not guard.changed_functions(
        {name: FINGERPRINTS[name] for name in _RACE_FUNCTIONS}
    )


# Event-driven reactors ------------------------------------------------------------------------
# Used on acceptor associations only; requestors (C-MOVE sub-operations) keep pynetdicom's.
_IDLE_WAIT = 0.05
#: A PDU longer than this is read in pieces, into a buffer that grows as they arrive.
_ONE_READ = MAX_PDU_SIZE + 6


class _WakingQueue(queue.Queue[Any]):
    """A queue that calls ``wake`` after each ``put``."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


_PDATA_HEADER = struct.Struct(">BBLLBB")
_PDV_LENGTH = struct.Struct(">L")


def _pdv_items(body: memoryview) -> list[list[Any]] | None:
    """The [context ID, control header + fragment] items of a P-DATA-TF PDU's body, or None
    where it is malformed (then pynetdicom's decoding says so)."""
    items: list[list[Any]] = []
    position, end = 0, len(body)
    while position < end:
        if end - position < 6:
            return None
        (length,) = _PDV_LENGTH.unpack_from(body, position)
        if length < 2 or position + 4 + length > end:
            return None
        items.append([body[position + 4], bytes(body[position + 5 : position + 4 + length])])
        position += 4 + length
    return items or None


class _EventDrivenDUL(BoundedDUL):
    """pynetdicom's DUL provider, idle in ``select`` rather than in a 1 ms polling loop."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.to_provider_queue = _WakingQueue(self.wake)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending already) or closed
            self._wake_w.send(b"\0")

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            self.wake()
            while self.is_alive():
                time.sleep(0.001)
            return True
        return False

    def _idle(self, socket_was_ready: bool) -> bool:
        """Wait for data on the socket, a queued primitive or a timer; True if the socket
        has data. After a wait ended by the socket without any work done, sleep as pynetdicom
        does: a socket that stays readable must not make this loop spin."""
        transport = self.socket
        sock = getattr(transport, "socket", None) if transport is not None else None
        if socket_was_ready or not isinstance(sock, socket.socket) or sock.fileno() < 0:
            time.sleep(self._run_loop_delay)
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted data that select cannot see
        try:
            # The ARTIM and idle timers are looked at after at most _IDLE_WAIT, as they
            # were after each 1 ms sleep.
            readable, _, _ = select.select([sock, self._wake_r], [], [], _IDLE_WAIT)
        except (OSError, ValueError):
            time.sleep(self._run_loop_delay)
            return False
        if self._wake_r in readable:
            try:
                while self._wake_r.recv(4096):
                    pass
            except OSError:
                pass
        return sock in readable

    # P-DATA-TF PDUs of an established association, the bulk of its traffic ----------------
    # ``guard.BoundedDUL._read_pdu_data`` checks each PDU's length before it is read, then
    # reads it with ``_receive`` and hands it over with ``_take_pdu``.
    def _take_pdu(self, pdu_type: int, header: bytearray | memoryview, body: Any) -> None:
        """A P-DATA-TF of an established association goes to DIMSE as its P-DATA primitive
        at once, as pynetdicom's DT-2 action would hand it over, without its decoding into
        PDU objects, two queues and the state machine's look-ups, when nobody listens for
        those steps (no handler of PDU, data or state machine events); any other PDU as
        pynetdicom takes it."""
        if pdu_type == 0x04 and self._hand_over_directly():
            items = _pdv_items(body)
            if items is not None:
                primitive = P_DATA()
                # pynetdicom's items are [context ID, bytes] lists (as to_primitive makes them)
                values: list[Any] = primitive.presentation_data_value_list
                values.extend(items)
                self.assoc.dimse.receive_primitive(primitive)
                return
        super()._take_pdu(pdu_type, header, body)

    def _receive(self, transport: AssociationSocket, count: int) -> memoryview:
        """``count`` bytes from the socket, fewer if the peer closed the connection.

        Up to ``_ONE_READ`` (every P-DATA-TF) into one buffer of that size (pynetdicom reads
        4 KiB at a time: nine system calls and copies for a 33 KiB image, 7,500 for a 30 MB
        mammogram); a longer PDU (an A-ASSOCIATE-RQ of up to ``guard.MAX_ASSOCIATE_PDU_SIZE``)
        in pieces of that size, so that memory grows only as the bytes arrive."""
        sock = transport.socket
        assert sock is not None
        if count > _ONE_READ:
            pieces = bytearray()
            while len(pieces) < count:
                piece = self._receive(transport, min(count - len(pieces), _ONE_READ))
                pieces += piece
                if not len(piece):
                    break
            return memoryview(pieces)
        buffer = bytearray(count)
        view = memoryview(buffer)
        received = 0
        while received < count:
            got = sock.recv_into(view[received:], count - received)
            if not got:
                break
            received += got
        return view[:received]

    def _hand_over_directly(self) -> bool:
        """Whether a P-DATA-TF may skip the state machine: established (Sta6, where its
        action is DT-2 and the state stays), nothing queued before it, nobody listening."""
        assoc = self.assoc
        return (
            self.state_machine.current_state == "Sta6"
            and not self.event_queue.queue
            and not assoc.get_handlers(evt.EVT_PDU_RECV)
            and not assoc.get_handlers(evt.EVT_DATA_RECV)
            and not assoc.get_handlers(evt.EVT_FSM_TRANSITION)
        )

    def send_command_now(self, context_id: int, command: bytes) -> bool:
        """Send a command set without a data set as one P-DATA-TF, now, from this thread,
        as DT-1 would (False, and nothing sent, where it must go the queued way)."""
        assoc = self.assoc
        transport = self.socket
        if (
            threading.current_thread() is not self
            or transport is None
            or self.state_machine.current_state != "Sta6"
            or self.to_provider_queue.queue
            or self.event_queue.queue
            or assoc.get_handlers(evt.EVT_PDU_SENT)
            or assoc.get_handlers(evt.EVT_DATA_SENT)
            or assoc.get_handlers(evt.EVT_FSM_TRANSITION)
        ):
            return False
        # PDU type 4, its length, one PDV item: length, context ID, message control header
        # 0x03 (command information, last fragment; PS3.8 E.2) and the command set.
        item_length = 2 + len(command)
        transport.send(
            _PDATA_HEADER.pack(0x04, 0x00, 4 + item_length, item_length, context_id, 0x03) + command
        )
        return True

    def run_reactor(self) -> None:
        try:
            self._run_event_driven()
        finally:
            self._wake_r.close()
            self._wake_w.close()
            if isinstance(self.assoc, _EventDrivenAssociation):
                self.assoc.wake()  # the association thread notices the DUL has ended

    def _run_event_driven(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider.run_reactor, its sleep replaced by ``_idle``.
        self._idle_timer.start()
        self.socket = cast("AssociationSocket", self.socket)
        sleep = False
        socket_ready = False

        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True

            socket_ready = self._idle(socket_ready) if sleep else False

            if self._kill_thread:
                break

            if self.artim_timer.expired:
                self.event_queue.put("Evt18")

            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
                    socket_ready = False
            except Exception as exc:
                _dul_logger.error("Exception in DUL.run(), aborting association")
                _dul_logger.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue

            self.state_machine.do_action(event)
            sleep = False
            socket_ready = False


class _EventDrivenAssociation(AcceptorAssociation):
    """An acceptor association whose reactor waits for messages instead of polling."""

    _wake_up: threading.Event

    def wake(self) -> None:
        self._wake_up.set()

    def kill(self) -> None:
        self._kill = True  # first, as pynetdicom does, then wake the loop so it sees it
        self._wake_up.set()
        super().kill()

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor, its 1 ms sleep replaced by a wait for a
        # queued message (or _IDLE_WAIT). While it waits it counts as paused: a send_*() from
        # another thread may go ahead, as the loop stops at the checkpoint before reading.
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            self._wake_up.wait(_IDLE_WAIT)
            self._wake_up.clear()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                self._wake_up.set()  # look again at once, as pynetdicom's loop does

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _assoc_logger.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                _assoc_logger.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                _assoc_logger.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()

                self.kill()
                return


# C-STORE responses ------------------------------------------------------------------------------
# pynetdicom turns every response primitive into a pydicom Dataset of command elements, encodes
# it twice (once to learn the group length) and then splits it into P-DATA fragments: about
# 0.3 ms of CPU for a C-STORE-RSP of some 100 bytes, a tenth of a whole store. A successful
# (or warning) C-STORE-RSP always has the same six elements, so the acceptor's associations
# encode it here, as pynetdicom would (PS3.7 9.3.1.2, 6.3.1: implicit VR little endian, in tag
# order), and queue it as the single P-DATA fragment pynetdicom would send. Anything else
# (failure details, a bound EVT_DIMSE_SENT handler, a tiny maximum PDU) takes pynetdicom's way.
_COMMAND_ELEMENT = struct.Struct("<HHI")
_US_ELEMENT = struct.Struct("<HHIH")
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101


def _uid_element(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"
    return _COMMAND_ELEMENT.pack(0x0000, element, len(value)) + value


def store_response_command(primitive: C_STORE) -> bytes | None:
    """The encoded command set of a C-STORE response, or None when pynetdicom must do it."""
    if (
        primitive.MessageIDBeingRespondedTo is None
        or primitive.Status is None
        or primitive.AffectedSOPClassUID is None
        or primitive.AffectedSOPInstanceUID is None
        or primitive.OffendingElement is not None
        or primitive.ErrorComment is not None
    ):
        return None
    return _store_response_bytes(
        str(primitive.AffectedSOPClassUID),
        primitive.MessageIDBeingRespondedTo,
        primitive.Status,
        str(primitive.AffectedSOPInstanceUID),
    )


def _store_response_bytes(
    sop_class_uid: str, message_id: int, status: int, sop_instance_uid: str
) -> bytes | None:
    try:
        body = b"".join(
            (
                _uid_element(0x0002, sop_class_uid),
                _US_ELEMENT.pack(0x0000, 0x0100, 2, _C_STORE_RSP),
                _US_ELEMENT.pack(0x0000, 0x0120, 2, message_id),
                _US_ELEMENT.pack(0x0000, 0x0800, 2, _NO_DATA_SET),
                _US_ELEMENT.pack(0x0000, 0x0900, 2, status),
                _uid_element(0x1000, sop_instance_uid),
            )
        )
    except (UnicodeEncodeError, struct.error):
        return None
    return _COMMAND_ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body


# C-STORE requests -------------------------------------------------------------------------------
# For each received message pynetdicom builds a DIMSE message object in the DUL thread, queues
# it for the association thread (a thread switch, and the interpreter lock handed over twice),
# decodes its command set with pydicom and turns it into a primitive (validating each UID
# again), looks up the service class, builds a response primitive and an event, and calls the
# handler: about a third of a C-STORE's CPU in Qamqor. The acceptor's DIMSE provider takes
# C-STORE requests itself, in the DUL thread: it collects the fragments (the presentation data
# values pynetdicom has already split out of the P-DATA-TF PDUs, PS3.8 E.2), reads the command
# set (``read_store_request``), calls the archive's handler (``DimseHandlers.store_received``,
# the same one pynetdicom's event calls; the data set is read by pydicom there) and queues the
# response, encoded as above or, for a failure, by pynetdicom. Every other message, a C-STORE
# request that pynetdicom would not serve (a required element missing, a context not accepted,
# during release) and any association with other handlers bound to the events concerned take
# pynetdicom's way, with the fragments collected so far handed over unchanged. Like the
# reactors above it reads pynetdicom's internals (``message``, ``_accepted_cx``,
# ``_sent_release``).
_C_STORE_RQ = 0x0001
_STORAGE_CLASSES = frozenset(storage_sop_classes())


@dataclass
class _IncomingStore:
    """A C-STORE request whose command set has been read; its data set is arriving."""

    handlers: DimseHandlers
    context_id: int
    transfer_syntax_uid: str
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    fragments: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class StoreRequest:
    """What the node needs of a C-STORE-RQ command set."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


_US = struct.Struct("<H")


def read_store_request(command: bytes) -> StoreRequest | None:
    """The C-STORE request this encoded command set is, or None.

    A command set is implicit VR little endian, group 0000 only (PS3.7 6.3.1): elements of
    a tag, a 4-byte length and the value, which is all this reads (``decode`` with pydicom
    cost more than the rest of the acceptor's part of a store). None for anything that is
    not a C-STORE-RQ with a data set and every element pynetdicom requires of one (message
    ID, affected SOP class and instance, priority): pynetdicom then decodes it as usual and
    says what is wrong. ``tests/pacs/test_dimse_encoding.py`` checks it against pynetdicom.
    """
    values: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if end - offset < _COMMAND_ELEMENT.size:
            return None
        group, element, length = _COMMAND_ELEMENT.unpack_from(command, offset)
        offset += _COMMAND_ELEMENT.size
        if group != 0x0000 or length > end - offset:
            return None
        values[element] = command[offset : offset + length]
        offset += length
    try:
        if (
            _US.unpack(values[0x0100])[0] != _C_STORE_RQ
            or _US.unpack(values[0x0800])[0] == _NO_DATA_SET
        ):
            return None
        _US.unpack(values[0x0700])  # the priority: required, any value
        message_id = int(_US.unpack(values[0x0110])[0])
        sop_class_uid = values[0x0002].decode("ascii").rstrip("\x00 ")
        sop_instance_uid = values[0x1000].decode("ascii").rstrip("\x00 ")
    except (KeyError, struct.error, UnicodeDecodeError):
        return None
    if not sop_class_uid or not sop_instance_uid:
        return None
    return StoreRequest(message_id, sop_class_uid, sop_instance_uid)


class _AcceptorDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, C-STORE requests served and answered directly (above)."""

    # Set on each new association by ``event_driven``.
    _held: list[tuple[int, bytes]]
    """Command fragments of a message not yet decided (ours, or pynetdicom's)."""
    _incoming: _IncomingStore | None

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = store_response_command(primitive) if type(primitive) is C_STORE else None
        if command is None or not self._send_command(command, context_id):
            super().send_msg(primitive, context_id)

    def _send_command(self, command: bytes, context_id: int) -> bool:
        """Queue a command set with no data set as one P-DATA; False if pynetdicom must."""
        maximum = self.maximum_pdu_size
        if (maximum and len(command) + 6 > maximum) or self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            return False
        dul = self.dul
        if isinstance(dul, _EventDrivenDUL) and dul.send_command_now(context_id, command):
            return True
        pdata = P_DATA()
        # Message control header 0x03: command information, last fragment (PS3.8 E.2).
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        dul.send_pdu(pdata)
        return True

    def receive_primitive(self, primitive: P_DATA) -> None:
        values = primitive.presentation_data_value_list
        for position, (context_id, data) in enumerate(values):
            if self.message is not None or not data:
                # pynetdicom is inside a message (or this is not one): the rest is its.
                self._hand_over(values[position:])
                return
            control = data[0]
            incoming = self._incoming
            if incoming is not None:
                if control & 0x01 or context_id != incoming.context_id:
                    _dimse_logger.error("A command fragment arrived inside a C-STORE data set")
                    self._incoming = None
                    self.dul.event_queue.put("Evt19")  # as pynetdicom does for bad messages
                    return
                incoming.fragments.append(data[1:])
                if control & 0x02:  # the last fragment of the data set
                    self._incoming = None
                    self._store(incoming)
                continue
            if not control & 0x01:  # a data set fragment of a message that is not ours
                self._hand_over(values[position:])
                return
            self._held.append((context_id, data))
            if not control & 0x02:
                continue
            incoming = self._accept(self._held)
            if incoming is None:
                self._hand_over(values[position + 1 :])
                return
            self._held = []
            self._incoming = incoming

    def _hand_over(self, values: list[tuple[int, bytes]]) -> None:
        """Give pynetdicom the held command fragments and ``values``, as it would get them."""
        held, self._held = self._held, []
        if held or values:
            pdata = P_DATA()
            # pynetdicom's items are [context ID, bytes] lists (its setter checks for lists)
            items: list[Any] = pdata.presentation_data_value_list
            items.extend([cid, data] for cid, data in held)
            items.extend(values)
            super().receive_primitive(pdata)

    def _accept(self, fragments: list[tuple[int, bytes]]) -> _IncomingStore | None:
        """The C-STORE request these command fragments make, if it is one served here."""
        context_id = fragments[-1][0]
        assoc = self.assoc
        handler, _ = assoc.get_handlers(evt.EVT_C_STORE)
        handlers = getattr(handler, "__self__", None)
        context = assoc._accepted_cx.get(context_id)
        if (
            any(cid != context_id for cid, _ in fragments)
            or context is None
            or not isinstance(handlers, DimseHandlers)
            or getattr(handler, "__func__", None) is not DimseHandlers.on_store
            or assoc.get_handlers(evt.EVT_DIMSE_RECV)
            or assoc._sent_release
            or _config.STORE_RECV_CHUNKED_DATASET
        ):
            return None
        request = read_store_request(b"".join(data[1:] for _, data in fragments))
        if request is None or request.sop_class_uid not in _STORAGE_CLASSES:
            return None
        return _IncomingStore(
            handlers=handlers,
            context_id=context_id,
            transfer_syntax_uid=str(context.transfer_syntax[0]),
            message_id=request.message_id,
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
        )

    def _store(self, incoming: _IncomingStore) -> None:
        assoc = self.assoc
        result = incoming.handlers.store_received(
            calling_ae_title=str(assoc.requestor.ae_title).strip(),
            sop_class_uid=incoming.sop_class_uid,
            sop_instance_uid=incoming.sop_instance_uid,
            transfer_syntax_uid=incoming.transfer_syntax_uid,
            dataset=b"".join(incoming.fragments),
        )
        if not assoc.is_established:
            return  # aborted meanwhile: nothing to answer
        if isinstance(result, int):
            command = _store_response_bytes(
                incoming.sop_class_uid, incoming.message_id, result, incoming.sop_instance_uid
            )
            if command is not None and self._send_command(command, incoming.context_id):
                return
        response = C_STORE()
        response.MessageIDBeingRespondedTo = incoming.message_id
        response.AffectedSOPClassUID = incoming.sop_class_uid
        response.AffectedSOPInstanceUID = incoming.sop_instance_uid
        response = StorageServiceClass(assoc).validate_status(result, response)
        self.send_msg(response, incoming.context_id)


# Putting it in place ----------------------------------------------------------------------------
def event_driven(
    assoc: Association, load: AcceptorLoad | None, slot: int | None
) -> AcceptorAssociation:
    """A new, not yet started acceptor association, guarded (``guard.guarded``) and given the
    event-driven reactors and the acceptor's own C-STORE path."""
    guarded = guard.guarded(
        assoc, load, slot, dul=_EventDrivenDUL, association=_EventDrivenAssociation
    )
    event_driven = cast(_EventDrivenAssociation, guarded)
    event_driven._wake_up = threading.Event()
    assoc.dimse.__class__ = _AcceptorDIMSE
    dimse = cast(_AcceptorDIMSE, assoc.dimse)
    dimse._held = []
    dimse._incoming = None
    # Messages for the association thread: DIMSE messages and ACSE primitives (release, abort).
    assoc.dimse.msg_queue = _WakingQueue(event_driven.wake)
    assoc.dul.to_user_queue = _WakingQueue(event_driven.wake)
    return guarded


class _SharedContexts(list[PresentationContext]):
    """The server's presentation contexts, shared by its associations.

    pynetdicom deep-copies them for every association it accepts (``RequestHandler.
    _create_association``): with every storage SOP class in every transfer syntax (194
    contexts, 2,936 syntaxes) that took 23 ms of CPU per association, more than storing a
    handful of images; a modality that opens an association per study paid it each time.
    Negotiation (``negotiate_as_acceptor``) only reads them and nothing changes them once the
    server runs, so each association gets a new list of the same contexts.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


def share_contexts(server: ThreadedAssociationServer) -> None:
    """Let the server's associations share its presentation contexts (``_SharedContexts``)."""
    server.contexts = _SharedContexts(server.contexts)


# A pynetdicom 3.0.4 race ------------------------------------------------------------------------
def leave_responses_to_sender(assoc: Any) -> None:
    """Keep pynetdicom's reactor thread of a storage SCU association off its DIMSE queue.

    pynetdicom 3.0.4 pauses an association's reactor before a ``send_*`` call with a flag
    handshake that has a gap (``Association._run_reactor`` clears ``_is_paused`` just after
    ``_reactor_checkpoint.wait()`` returns, while ``send_c_store`` may already have read the
    stale value). When the reactor thread is preempted there, it takes the C-STORE-RSP off the
    queue, logs "Received unexpected C-STORE service message" and drops it; ``send_c_store``
    then waits out the DIMSE timeout and aborts the C-MOVE. Seen on 2 busy cores in about 1
    of 4 runs of 8 associations. A C-MOVE sub-association only sends, never serves its
    peer's requests, so the reactor's non-blocking reads become no-ops; ``send_c_store``
    reads with ``block=True`` and is unaffected. For 3.0.4 only (``race_fix_applies``).
    """
    dimse = assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block:
            return None, None
        return take(block=True)

    dimse.get_msg = get_msg
