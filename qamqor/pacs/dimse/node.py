"""The DICOM node: the pynetdicom AE, its server and its handlers.

The node serves on one of two paths, chosen when it is made (``DicomNode.fast_path``): the
fast path (``fastpath``: event-driven reactors and the acceptor's own C-STORE handling on
pynetdicom 3.0.4's internals, with exactly that version and ``QAMQOR_DICOM_FAST_PATH=auto``)
or the plain one (pynetdicom's own reactors and the handlers of ``handlers``). On both, every
acceptor association is guarded (``guard``: PDUs bounded before they are read, its place under
the association limits held while it runs), connections beyond the limits are closed at once
(``_NodeServer``), known AEs are tied to their addresses and permissions (``access``, through
the handlers), and TLS, when set, is negotiated in each connection's own thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from typing import Any

import pynetdicom
from pynetdicom import AE, QueryRetrievePresentationContexts, _config
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from qamqor.core.settings import Settings
from qamqor.pacs.dimse import fastpath, guard
from qamqor.pacs.dimse.contexts import (
    NATIVE_TRANSFER_SYNTAXES,
    STORAGE_TRANSFER_SYNTAXES,
    VERIFICATION,
    storage_sop_classes,
)
from qamqor.pacs.dimse.guard import MAX_PDU_SIZE
from qamqor.pacs.dimse.handlers import DimseHandlers
from qamqor.pacs.dimse.load import AcceptorLoad, AssociationLimits
from qamqor.pacs.service import ArchiveService

logger = logging.getLogger(__name__)

# pynetdicom logs whole query and response identifiers (names, IDs, birth dates) by default.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# pynetdicom's default handlers of the PDU and DIMSE events log every message ("Received Store
# Request" at INFO, a summary at DEBUG): four events and handlers per C-STORE, a log line per
# instance. "none" (a documented setting) drops them; association set-up and release are still
# logged (ACSE), and so is every refused or failed store (our handlers).
_config.LOG_HANDLER_LEVEL = "none"


class _NodeServer(ThreadedAssociationServer):
    """pynetdicom's server, counting connections (``load``) and refusing them beyond the
    limits; TLS handshakes are left to each connection's thread."""

    # socketserver's default backlog of 5 refuses bursts of modalities connecting at once.
    request_queue_size = 128
    limits: AssociationLimits
    """The connections of every acceptor process and the limits on them."""
    _slots: dict[socket.socket, int]
    """The load slot of each accepted connection not yet taken by its request handler."""
    fast_path = False
    """Whether its associations take the fast path (``fastpath``)."""

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
        # pynetdicom 3.0.4's runs a full ``gc.collect()`` every 60th call (each association and
        # each half-second poll): 40-50 ms holding the interpreter lock in a process of this
        # size, which stalled every association of the process. On the fast path it is left
        # out (Python's own collector frees the finished associations' reference cycles as
        # they pile up); on the plain path pynetdicom's, whatever it does, runs.
        if not self.fast_path:
            super().service_actions()


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


class _NodeAE(AE):
    listening_socket: socket.socket | None = None
    limits: AssociationLimits
    fast_path = False

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
        if self.fast_path:
            fastpath.share_contexts(server)
        if isinstance(server, _NodeServer):
            server.limits = self.limits
            server._slots = {}
            server.fast_path = self.fast_path
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
    fast_path: bool = False,
) -> AE:
    """The application entity with every context the node serves; its server's associations
    take the fast path with ``fast_path`` (``fastpath``)."""
    ae = _NodeAE(ae_title=settings.dicom_ae_title)
    ae.listening_socket = listening_socket
    ae.fast_path = fast_path
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


def choose_path(settings: Settings) -> bool:
    """Whether a node with these settings takes the fast path; says why not where it may not.

    Refuses (``guard.UnsupportedPynetdicom``) where the installed pynetdicom lacks what the
    bounded PDU reader needs, on either path."""
    guard.check_pynetdicom()
    reason = fastpath.unavailable(settings.dicom_fast_path)
    if reason is None:
        return True
    level = logging.INFO if settings.dicom_fast_path == "off" else logging.WARNING
    logger.log(level, "DICOM fast path not used (%s): pynetdicom's own reactors serve", reason)
    return False


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
        self.fast_path = choose_path(settings)
        """Whether its associations take the fast path (``fastpath``) or pynetdicom's own."""
        self.limits = node_limits(settings, load)
        self.ssl_context = tls_context(settings)
        self.handlers = DimseHandlers(
            settings=settings,
            archive=archive,
            limits=self.limits,
            prepare_sub_association=(
                fastpath.leave_responses_to_sender if fastpath.race_fix_applies() else None
            ),
        )
        self.ae = build_ae(
            settings,
            listening_socket=listening_socket,
            limits=self.limits,
            fast_path=self.fast_path,
        )
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
            "DICOM node %s listening on %s:%d%s, %s path (pynetdicom %s)",
            self.settings.dicom_ae_title,
            self.settings.dicom_host,
            self.port,
            " (TLS)" if self.ssl_context is not None else "",
            "fast" if self.fast_path else "plain",
            pynetdicom.__version__,
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


class _RequestHandler(RequestHandler):
    """pynetdicom's request handler: the TLS handshake done here, in the connection's own
    thread, within the ACSE timeout; its associations guarded (``guard``; and on the fast
    path, ``fastpath``), each holding its connection's load slot until it ends."""

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
        server = self.server
        load = server.limits.load if isinstance(server, _NodeServer) else None
        if isinstance(server, _NodeServer) and server.fast_path:
            return fastpath.event_driven(assoc, load, slot)
        return guard.guarded(assoc, load, slot)
