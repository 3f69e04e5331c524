"""The DICOM node: builds the pynetdicom AE and binds the handlers, nothing more."""

from __future__ import annotations

import logging
import socket
from typing import Any

from pynetdicom import AE, QueryRetrievePresentationContexts, _config
from pynetdicom.transport import ThreadedAssociationServer

from qamqor.core.settings import Settings
from qamqor.pacs.dimse.contexts import (
    NATIVE_TRANSFER_SYNTAXES,
    STORAGE_TRANSFER_SYNTAXES,
    VERIFICATION,
    storage_sop_classes,
)
from qamqor.pacs.dimse.handlers import DimseHandlers
from qamqor.pacs.service import ArchiveService

logger = logging.getLogger(__name__)

# pynetdicom logs whole query and response identifiers (names, IDs, birth dates) by default.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

#: The largest PDU peers may send us; bigger PDUs mean fewer round trips for large images.
MAX_PDU_SIZE = 131072


class _NodeServer(ThreadedAssociationServer):
    # socketserver's default backlog of 5 refuses bursts of modalities connecting at once.
    request_queue_size = 128


class _SharedPortServer(_NodeServer):
    """Binds with SO_REUSEPORT: several processes listen on one port, the kernel spreads the
    incoming associations over them (each process has its own interpreter lock)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _NodeAE(AE):
    share_port = False

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("server_class") is ThreadedAssociationServer:
            kwargs["server_class"] = _SharedPortServer if self.share_port else _NodeServer
        return super().make_server(*args, **kwargs)


def build_ae(settings: Settings, *, share_port: bool = False) -> AE:
    """The application entity with every context the node serves."""
    ae = _NodeAE(ae_title=settings.dicom_ae_title)
    ae.share_port = share_port
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
    share_port:
        Listen with SO_REUSEPORT, so that other processes can serve the same port.
    """

    def __init__(
        self, *, settings: Settings, archive: ArchiveService, share_port: bool = False
    ) -> None:
        self.settings = settings
        self.handlers = DimseHandlers(settings=settings, archive=archive)
        self.ae = build_ae(settings, share_port=share_port)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (useful when started on port 0)."""
        if self._server is None:
            return self.settings.dicom_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen for associations in background threads (returns at once)."""
        if self._server is not None:
            return
        self._server = self.ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            evt_handlers=self.handlers.bindings(),
        )
        logger.info(
            "DICOM node %s listening on %s:%d",
            self.settings.dicom_ae_title,
            self.settings.dicom_host,
            self.port,
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
