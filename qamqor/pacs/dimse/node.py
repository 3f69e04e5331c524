"""The DICOM node: builds the pynetdicom AE and binds the handlers, nothing more."""

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
from pynetdicom import AE, QueryRetrievePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from qamqor.core.settings import Settings
from qamqor.pacs.dimse.contexts import (
    NATIVE_TRANSFER_SYNTAXES,
    STORAGE_TRANSFER_SYNTAXES,
    VERIFICATION,
    storage_sop_classes,
)
from qamqor.pacs.dimse.handlers import DimseHandlers
from qamqor.pacs.dimse.load import AcceptorLoad, AssociationLimits
from qamqor.pacs.service import ArchiveService

if TYPE_CHECKING:
    from pynetdicom.transport import AssociationSocket

logger = logging.getLogger(__name__)
# The loggers pynetdicom's own loops write to (the copies below write to the same).
_dul_logger = logging.getLogger("pynetdicom.dul")
_assoc_logger = logging.getLogger("pynetdicom.association")
_dimse_logger = logging.getLogger("pynetdicom.dimse")

# pynetdicom logs whole query and response identifiers (names, IDs, birth dates) by default.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# pynetdicom's default handlers of the PDU and DIMSE events log every message ("Received Store
# Request" at INFO, a summary at DEBUG): four events and handlers per C-STORE, a log line per
# instance. "none" (a documented setting) drops them; association set-up and release are still
# logged (ACSE), and so is every refused or failed store (our handlers).
_config.LOG_HANDLER_LEVEL = "none"

#: The largest PDU peers may send us; bigger PDUs mean fewer round trips for large images.
MAX_PDU_SIZE = 131072
#: The largest A-ASSOCIATE-RQ (or -AC) read: 128 presentation contexts of 20 transfer syntaxes
#: each and every kind of user information fit several times over.
MAX_ASSOCIATE_PDU_SIZE = 1 << 20
#: A-ASSOCIATE-RJ, A-RELEASE-RQ and -RP, A-ABORT: their length is always 4 (PS3.8 9.3).
_FIXED_PDU_LENGTH = 4


def pdu_limits(maximum_pdu_size: int) -> tuple[int, ...]:
    """The largest length (the header's, less its 6 bytes) accepted of each PDU type, by
    type (0x01-0x07; 0 unused); a P-DATA-TF's is our maximum PDU length (the maximum length
    of its PDV items, PS3.8 D.1), which the peer was told when the association was made."""
    return (
        0,
        MAX_ASSOCIATE_PDU_SIZE,  # A-ASSOCIATE-RQ
        MAX_ASSOCIATE_PDU_SIZE,  # A-ASSOCIATE-AC
        _FIXED_PDU_LENGTH,  # A-ASSOCIATE-RJ
        maximum_pdu_size,  # P-DATA-TF
        _FIXED_PDU_LENGTH,  # A-RELEASE-RQ
        _FIXED_PDU_LENGTH,  # A-RELEASE-RP
        _FIXED_PDU_LENGTH,  # A-ABORT
    )


class _NodeServer(ThreadedAssociationServer):
    """pynetdicom's server, counting connections (``load``) and refusing them beyond the
    limits; TLS handshakes are left to each connection's thread."""

    # socketserver's default backlog of 5 refuses bursts of modalities connecting at once.
    request_queue_size = 128
    limits: AssociationLimits
    """The connections of every acceptor process and the limits on them."""
    _slots: dict[socket.socket, int]
    """The load slot of each accepted connection not yet taken by its request handler."""

    def get_request(self) -> tuple[socket.socket, Any]:
        load = self.limits.load
        if load.defer():
            raise OSError("left to a less busy acceptor process")  # socketserver: none now
        assert self.socket is not None
        client, address = self.socket.accept()
        peer = str(address[0])
        slot = load.started(peer)
        if slot is None:
            refusal: str | None = "this process holds all the connections it may"
        else:
            refusal = self.limits.connection_refusal(peer)
            if refusal is not None:
                load.ended(slot)
        if slot is None or refusal is not None:
            with contextlib.suppress(OSError):
                client.close()
            logger.warning("DICOM connection from %s closed at once: %s", peer, refusal)
            raise OSError("connection refused")  # socketserver: none now
        # Accepted sockets block; a peer that stops sending in the middle of a PDU must not
        # hold its thread (and its place) for ever.
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context is not None:
            # The handshake runs in the connection's thread (``_RequestHandler``): here it
            # would stop every other connection while a peer takes its time.
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        self._slots[client] = slot  # ended when its association thread ends
        return client, address

    def take_slot(self, request: Any) -> int | None:
        """The load slot of an accepted connection, now its request handler's to end."""
        return self._slots.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The request failed before its handler took its slot.
        slot = self.take_slot(request)
        if slot is not None:
            self.limits.load.ended(slot)
        super().handle_error(request, client_address)

    def service_actions(self) -> None:
        # pynetdicom runs a full ``gc.collect()`` every 60th call (each association and each
        # half-second poll): 40-50 ms holding the interpreter lock in a process of this size,
        # which stalled every association of the process. Python's own collector frees the
        # finished associations' reference cycles as they pile up.
        pass


class _SharedSocketServer(_NodeServer):
    """Serves a listening socket opened by another process (``qamqor serve``'s main one).

    Every acceptor process waits in ``accept`` on the same socket, so a new association goes
    to whichever process asks first: the least busy one. (SO_REUSEPORT, used before, spread
    them by a hash of the peer's address and port: 8 associations were often split 6 to 2,
    leaving one process, with its one interpreter lock, the work of three quarters.) The
    socket is non-blocking: when another process took the connection first, ``accept`` fails
    and socketserver goes back to waiting, where a blocking one would wait in ``accept``.
    """

    inherited: socket.socket

    def server_bind(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.socket = self.inherited
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass  # listening already


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


class _NodeAE(AE):
    listening_socket: socket.socket | None = None
    limits: AssociationLimits

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("server_class") is ThreadedAssociationServer:
            server_class: type[_NodeServer] = _NodeServer
            if self.listening_socket is not None:
                server_class = type(
                    "_InheritedSocketServer",
                    (_SharedSocketServer,),
                    {"inherited": self.listening_socket},
                )
            kwargs["server_class"] = server_class
            kwargs["request_handler"] = _RequestHandler
        server = super().make_server(*args, **kwargs)
        server.contexts = _SharedContexts(server.contexts)
        if isinstance(server, _NodeServer):
            server.limits = self.limits
            server._slots = {}
        return server


def node_limits(settings: Settings, load: AcceptorLoad | None = None) -> AssociationLimits:
    """The settings' association limits over ``load`` (a single process's without one)."""
    total = settings.dicom_max_associations
    if load is None:
        load = AcceptorLoad.local(AssociationLimits.slots_for(total))
    return AssociationLimits(load, total, settings.dicom_max_associations_per_peer)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The DICOM port's TLS context (PS3.15 B.1, TLS 1.2 or later), or None without TLS."""
    if settings.dicom_tls_cert is None or settings.dicom_tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
        if settings.dicom_tls_ca is not None:
            context.load_verify_locations(cafile=settings.dicom_tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"DICOM TLS: cannot load the certificate, key or CA ({exc}); see "
            "QAMQOR_DICOM_TLS_CERT, QAMQOR_DICOM_TLS_KEY, QAMQOR_DICOM_TLS_CA"
        ) from None
    if settings.dicom_tls_require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    elif settings.dicom_tls_ca is not None:
        context.verify_mode = ssl.CERT_OPTIONAL  # checked when one is sent
    return context


def build_ae(
    settings: Settings,
    *,
    listening_socket: socket.socket | None = None,
    limits: AssociationLimits | None = None,
) -> AE:
    """The application entity with every context the node serves."""
    ae = _NodeAE(ae_title=settings.dicom_ae_title)
    ae.listening_socket = listening_socket
    ae.limits = limits if limits is not None else node_limits(settings)
    # Ours are checked first (``DimseHandlers.on_requested``), over all acceptor processes;
    # pynetdicom's counts this process's associations only, which never hold more.
    ae.maximum_associations = settings.dicom_max_associations
    ae.maximum_pdu_size = MAX_PDU_SIZE
    ae.require_called_aet = True  # the called AE title must be ours
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.network_timeout = 120
    syntaxes = list(STORAGE_TRANSFER_SYNTAXES)
    ae.add_supported_context(VERIFICATION, list(NATIVE_TRANSFER_SYNTAXES))
    for sop_class in storage_sop_classes():
        # SCP role for C-STORE; SCU role taken when a C-GET requestor asks for it.
        ae.add_supported_context(sop_class, syntaxes, scu_role=False, scp_role=True)
    for cx in QueryRetrievePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, list(NATIVE_TRANSFER_SYNTAXES))
    return ae


class DicomNode:
    """Qamqor's DIMSE service: C-ECHO, C-STORE, C-FIND, C-MOVE and C-GET.

    Parameters
    ----------
    settings:
        AE title, host, port, known remote AEs and the association policy.
    archive:
        The archive service instances are stored into and read from.
    listening_socket:
        Serve this listening socket (another process's, see ``_SharedSocketServer``) rather
        than open one on the settings' host and port.
    load:
        Where several acceptor processes serve the socket: their connection counts, so that
        each takes its share and the limits hold for them all (``qamqor.pacs.dimse.load``).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        archive: ArchiveService,
        listening_socket: socket.socket | None = None,
        load: AcceptorLoad | None = None,
    ) -> None:
        self.settings = settings
        self.limits = node_limits(settings, load)
        self.ssl_context = tls_context(settings)
        self.handlers = DimseHandlers(settings=settings, archive=archive, limits=self.limits)
        self.ae = build_ae(settings, listening_socket=listening_socket, limits=self.limits)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (useful when started on port 0)."""
        if self._server is None:
            return self.settings.dicom_port
        return int(self._server.server_address[1])

    def shared_socket(self) -> socket.socket:
        """The listening socket of this started node, made ready for other acceptor processes
        to serve as well (see ``_SharedSocketServer``)."""
        sock = self._server.socket if self._server is not None else None
        if sock is None:
            raise RuntimeError("the node is not started")
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        """Listen for associations in background threads (returns at once)."""
        if self._server is not None:
            return
        self._server = self.ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            evt_handlers=self.handlers.bindings(),
            ssl_context=self.ssl_context,
        )
        logger.info(
            "DICOM node %s listening on %s:%d%s",
            self.settings.dicom_ae_title,
            self.settings.dicom_host,
            self.port,
            " (TLS)" if self.ssl_context is not None else "",
        )

    def stop(self) -> None:
        """Abort open associations and close the listening socket."""
        if self._server is None:
            return
        # Only established associations are aborted: one being rejected is already closing,
        # and an A-ABORT in that state makes pynetdicom's DUL thread raise.
        for assoc in self.ae.active_associations:
            if assoc.is_established:
                assoc.abort()
        self._server.shutdown()
        self._server = None


# Event-driven reactors ------------------------------------------------------------------------
# pynetdicom 3.0 runs two threads per association that poll: the DUL thread sleeps 1 ms between
# looks at its socket and queues (``DULServiceProvider.run_reactor``), the association thread
# 1 ms between looks at its DIMSE queue (``Association._run_reactor``). Measured on the 2-core
# development machine: 8 idle associations kept ``qamqor serve`` at 47 % of a core, and while
# storing they took most of the CPU time of an instance over 8 associations; each store also
# waited up to a millisecond at each of three hand-overs. pynetdicom has no setting for this
# (``_run_loop_delay`` only trades CPU for latency), so the acceptor's associations get the
# same loops with the sleeps replaced by waits that end as soon as there is work: the DUL thread
# waits in ``select`` on its socket and a wake-up socket that every queued primitive writes to,
# the association thread on an event set whenever a message is queued for it. Every wait also
# ends after ``_IDLE_WAIT`` seconds, so a missed wake-up costs latency, never a hang, and timers
# are checked as before. The loops are copies of pynetdicom 3.0.4's (same steps, same order):
# they are used only with pynetdicom 3.0.x (``EVENT_DRIVEN``), stock pynetdicom otherwise.
# Requestor associations (C-MOVE sub-operations) keep pynetdicom's own reactors.
EVENT_DRIVEN = pynetdicom.__version__.startswith("3.0.")
_IDLE_WAIT = 0.05


class _WakingQueue(queue.Queue[Any]):
    """A queue that calls ``wake`` after each ``put``."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


_PDU_HEADER = struct.Struct(">BBL")
_PDATA_HEADER = struct.Struct(">BBLLBB")
_PDV_LENGTH = struct.Struct(">L")
_PDU_TYPES = frozenset(range(0x01, 0x08))


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


# Bounded PDUs -----------------------------------------------------------------------------------
# pynetdicom reads whatever length a PDU's header claims (up to 4 GiB), and so did the reactor
# below, which allocated it at once: a 6-byte header took a process's memory up by a gigabyte,
# a few of them got ``qamqor serve`` killed. Every acceptor DUL now checks the length against
# the largest of the PDU's type (``pdu_limits``: two integer comparisons per PDU) before
# reading it; a longer one is answered with an A-ABORT (Evt19, as for an invalid PDU, so the
# state machine sends it and the association ends as pynetdicom ends it), logged with the
# peer's address, and whatever the peer sends after it is read and dropped, 64 KiB at a time,
# until it closes the connection or the ARTIM timer ends it.
_DISCARD_CHUNK = 65536
#: A PDU longer than this is read in pieces, into a buffer that grows as they arrive.
_ONE_READ = MAX_PDU_SIZE + 6
#: How often a wait for the peer's next primitive looks whether the connection was closed.
_CLOSED_CHECK = 0.25


class _BoundedDUL(DULServiceProvider):
    """pynetdicom's DUL provider, every PDU's length checked before the PDU is read."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        local = assoc.acceptor if assoc.is_acceptor else assoc.requestor
        self.pdu_limits = pdu_limits(local.maximum_length or MAX_PDU_SIZE)
        self._discarding = False

    def receive_pdu(self, wait: bool = False, timeout: float | None = None) -> Any:
        """pynetdicom's, except that a wait with a timeout ends, with None, once the
        connection is closed: an acceptor waited the whole ACSE timeout for the A-ASSOCIATE-RQ
        of a peer that had gone, holding its connection's place under the limits."""
        if not wait or timeout is None or timeout <= _CLOSED_CHECK:
            return super().receive_pdu(wait, timeout)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            primitive = super().receive_pdu(True, max(0.0, min(remaining, _CLOSED_CHECK)))
            if primitive is not None or remaining <= _CLOSED_CHECK:
                return primitive
            if self._connection_closed():
                return super().receive_pdu(False)  # anything queued as it closed

    def _connection_closed(self) -> bool:
        transport = self.socket
        sock = transport.socket if transport is not None else None
        return sock is None or sock.fileno() < 0

    def _refuse_pdu(self, pdu_type: int, pdu_length: int) -> None:
        """Abort the association over a PDU longer than its type may be."""
        assoc = self.assoc
        peer = assoc.requestor.address if assoc.is_acceptor else assoc.acceptor.address
        logger.warning(
            "DICOM peer %s sent a PDU of type 0x%02X claiming %d bytes (at most %d here, "
            "state %s): association aborted",
            peer,
            pdu_type,
            pdu_length,
            self.pdu_limits[pdu_type],
            self.state_machine.current_state,
        )
        self._discarding = True
        self.event_queue.put("Evt19")

    def _discard_input(self) -> None:
        """Read and drop what arrived after a refused PDU; Evt17 once the peer closed."""
        transport = self.socket
        sock = transport.socket if transport is not None else None
        try:
            closed = sock is None or not sock.recv(_DISCARD_CHUNK)
        except (OSError, TimeoutError):
            closed = True
        if closed:
            self.event_queue.put("Evt17")

    def _read_pdu_data(self) -> None:
        """pynetdicom 3.0.4's ``_read_pdu_data`` (same events for the same failures), the
        PDU's length checked before it is read (the transport reads 4 KiB at a time)."""
        if self._discarding:
            self._discard_input()
            return
        transport = cast("AssociationSocket", self.socket)
        try:
            header = transport.recv(6)
        except (OSError, TimeoutError):
            _dul_logger.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(header) < 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
        if pdu_type not in _PDU_TYPES:
            _dul_logger.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return
        if pdu_length > self.pdu_limits[pdu_type]:
            self._refuse_pdu(pdu_type, pdu_length)
            return
        try:
            bytestream = header + transport.recv(pdu_length)
        except (OSError, TimeoutError):
            _dul_logger.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(bytestream) != 6 + pdu_length:
            _dul_logger.error(
                f"The received PDU is shorter than expected ({len(bytestream)} of "
                f"{6 + pdu_length} bytes received)"
            )
            self.event_queue.put("Evt17")
            return
        try:
            pdu, event = self._decode_pdu(bytestream)
            self.event_queue.put(event)
        except Exception as exc:
            _dul_logger.error("Unable to decode the received PDU data")
            _dul_logger.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)


class _EventDrivenDUL(_BoundedDUL):
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
    def _read_pdu_data(self) -> None:
        """pynetdicom 3.0.4's ``_read_pdu_data`` (same events for the same failures), with
        three changes. The PDU's length is checked first (``_BoundedDUL``). The PDU is read
        into one buffer (pynetdicom reads 4 KiB at a time: nine system calls and copies for a
        33 KiB image, 7,500 for a 30 MB mammogram). And a P-DATA-TF of an established
        association goes to DIMSE as its P-DATA primitive at once, as pynetdicom's DT-2
        action would hand it over, without its decoding into PDU objects, two queues and the
        state machine's look-ups, when nobody listens for those steps (no handler of PDU,
        data or state machine events)."""
        if self._discarding:
            self._discard_input()
            return
        transport = cast("AssociationSocket", self.socket)
        try:
            header = self._recv_exactly(transport, 6)
            if len(header) < 6:
                self.event_queue.put("Evt17")  # as pynetdicom: the peer closed the connection
                return
            pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
            if pdu_type not in _PDU_TYPES:
                _dul_logger.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
                self.event_queue.put("Evt19")
                return
            if pdu_length > self.pdu_limits[pdu_type]:
                self._refuse_pdu(pdu_type, pdu_length)
                return
            body = self._recv_exactly(transport, pdu_length)
        except (OSError, TimeoutError):
            _dul_logger.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(body) != pdu_length:
            _dul_logger.error(
                f"The received PDU is shorter than expected ({len(body) + 6} of "
                f"{6 + pdu_length} bytes received)"
            )
            self.event_queue.put("Evt17")
            return
        if pdu_type == 0x04 and self._hand_over_directly():
            items = _pdv_items(body)
            if items is not None:
                primitive = P_DATA()
                # pynetdicom's items are [context ID, bytes] lists (as to_primitive makes them)
                values: list[Any] = primitive.presentation_data_value_list
                values.extend(items)
                self.assoc.dimse.receive_primitive(primitive)
                return
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
            self.event_queue.put(event)
        except Exception as exc:
            _dul_logger.error("Unable to decode the received PDU data")
            _dul_logger.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    @staticmethod
    def _recv_exactly(transport: AssociationSocket, count: int) -> memoryview:
        """``count`` bytes from the socket, fewer if the peer closed the connection.

        Up to ``_ONE_READ`` (every P-DATA-TF) into a buffer of that size at once; a longer
        PDU (an A-ASSOCIATE-RQ of up to ``MAX_ASSOCIATE_PDU_SIZE``) in pieces of that size,
        so that memory grows only as the bytes arrive."""
        sock = transport.socket
        assert sock is not None
        if count > _ONE_READ:
            pieces = bytearray()
            while len(pieces) < count:
                piece = _EventDrivenDUL._recv_exactly(
                    transport, min(count - len(pieces), _ONE_READ)
                )
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


class _AcceptorAssociation(Association):
    """An acceptor association that holds its connection's load slot while it runs."""

    _load: AcceptorLoad | None
    _slot: int | None

    def run(self) -> None:
        # The thread's own ``run`` (its target, pynetdicom's ``run_reactor``, was bound when
        # the association was made, before it became this class).
        try:
            super().run()
        finally:
            if self._load is not None and self._slot is not None:
                self._load.ended(self._slot)


class _EventDrivenAssociation(_AcceptorAssociation):
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
# ``_sent_release``), so it is used with pynetdicom 3.0.x only (``EVENT_DRIVEN``).
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

    # Set on each new association by ``_make_event_driven``.
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


def _replace_dul(assoc: Association, dul: DULServiceProvider) -> None:
    """Put ``dul`` in the place of a new, not yet started association's DUL provider."""
    stock = assoc.dul
    dul.socket = stock.socket
    # Events queued already (the socket's Evt5, "transport connection indication") go along.
    dul.event_queue = stock.event_queue
    dul._idle_timer.timeout = stock._idle_timer.timeout
    dul.artim_timer.timeout = stock.artim_timer.timeout
    assoc.dul = dul


def _make_bounded(assoc: Association, slot: int | None) -> Association:
    """Give a new, not yet started acceptor association a bounded DUL provider and its load
    slot (pynetdicom's reactors otherwise)."""
    _replace_dul(assoc, _BoundedDUL(assoc))
    assoc.__class__ = _AcceptorAssociation
    accepted = cast(_AcceptorAssociation, assoc)
    server = getattr(assoc, "_server", None)
    accepted._load = server.limits.load if isinstance(server, _NodeServer) else None
    accepted._slot = slot
    return assoc


def _make_event_driven(assoc: Association, slot: int | None) -> Association:
    """Give a new, not yet started acceptor association the event-driven reactors (bounded
    too) and its load slot."""
    _make_bounded(assoc, slot)
    dul = _EventDrivenDUL(assoc)
    _replace_dul(assoc, dul)
    assoc.__class__ = _EventDrivenAssociation
    event_driven = cast(_EventDrivenAssociation, assoc)
    event_driven._wake_up = threading.Event()
    assoc.dimse.__class__ = _AcceptorDIMSE
    dimse = cast(_AcceptorDIMSE, assoc.dimse)
    dimse._held = []
    dimse._incoming = None
    # Messages for the association thread: DIMSE messages and ACSE primitives (release, abort).
    assoc.dimse.msg_queue = _WakingQueue(event_driven.wake)
    dul.to_user_queue = _WakingQueue(event_driven.wake)
    return assoc


class _RequestHandler(RequestHandler):
    """pynetdicom's request handler: the TLS handshake done here, in the connection's own
    thread, within the ACSE timeout; its associations bounded (and event-driven where
    ``EVENT_DRIVEN``), each holding its connection's load slot until it ends."""

    _slot: int | None = None

    def handle(self) -> None:
        server = self.server
        self._slot = server.take_slot(self.request) if isinstance(server, _NodeServer) else None
        try:
            if isinstance(self.request, ssl.SSLSocket) and not self._handshake(self.request):
                return
            super().handle()  # creates the association (which takes the slot) and starts it
        finally:
            if self._slot is not None and isinstance(server, _NodeServer):
                server.limits.load.ended(self._slot)  # no association took it

    def _handshake(self, sock: ssl.SSLSocket) -> bool:
        peer = self.client_address[0] if isinstance(self.client_address, tuple) else "?"
        timeout = sock.gettimeout()
        try:
            sock.settimeout(self.ae.acse_timeout)
            sock.do_handshake()
            sock.settimeout(timeout)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            logger.warning("DICOM TLS handshake with %s failed: %s", peer, reason)
            with contextlib.suppress(OSError):
                sock.close()
            return False
        return True

    def _create_association(self) -> Association:
        slot, self._slot = self._slot, None
        assoc = super()._create_association()
        if EVENT_DRIVEN:
            return _make_event_driven(assoc, slot)
        return _make_bounded(assoc, slot)
