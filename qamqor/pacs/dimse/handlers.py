"""DIMSE event handlers: events in, archive service calls, DIMSE statuses out.

Handlers never raise: pynetdicom would log the exception in full, and an exception message
may hold patient data. Everything unexpected is logged by type and answered with a failure
status. Logs carry AE titles, UIDs and error types only.
"""

from __future__ import annotations

import io
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, cast

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.uid import UID
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    build_context,
    evt,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from qamqor.core import audit
from qamqor.core.audit import AuditAction
from qamqor.core.db import write_session
from qamqor.core.errors import ErrorKind, QamqorError
from qamqor.core.settings import Settings
from qamqor.pacs.dimse.access import NodeAccess
from qamqor.pacs.dimse.contexts import VERIFICATION, retrieve_contexts
from qamqor.pacs.dimse.identifiers import Query, build_response, parse_query, parse_retrieve
from qamqor.pacs.dimse.load import REJECT_BUSY, AssociationLimits
from qamqor.pacs.errors import InvalidInstanceError, PacsError
from qamqor.pacs.parsing import (
    STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
    parse_received,
)
from qamqor.pacs.query import Level, search
from qamqor.pacs.service import ArchiveService
from qamqor.pacs.transcode import choose_syntax, to_syntax

logger = logging.getLogger(__name__)

# Statuses (PS3.4 Annex B, C and PS3.7 Annex C)
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
OUT_OF_RESOURCES = 0xA700
OUT_OF_RESOURCES_MATCHES = 0xA701  # C-MOVE, C-GET: unable to calculate the number of matches
IDENTIFIER_DOES_NOT_MATCH = 0xA900
NOT_AUTHORISED = 0x0124
UNABLE_TO_PROCESS = 0xC000

#: Association rejection: permanent, by the service user, calling AE title not recognised.
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)
_MAX_COMMENT = 64  # ErrorComment is LO
_AUDIT_STUDIES = 50  # study UIDs listed in one audit event
_IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
_IMPLEMENTATION_VERSION = str(PYNETDICOM_IMPLEMENTATION_VERSION)


def status(code: int, comment: str = "") -> Dataset:
    """A status dataset with an ErrorComment (no patient data)."""
    result = Dataset()
    result.Status = code
    if comment:
        if len(comment) > _MAX_COMMENT:
            comment = comment[: _MAX_COMMENT - 3] + "..."
        result.ErrorComment = comment
    return result


class Service(StrEnum):
    """The DIMSE services whose failures are answered by ``failure_status``."""

    STORE = "C-STORE"
    FIND = "C-FIND"
    RETRIEVE = "retrieve"  # C-MOVE and C-GET


#: The status of each kind of domain error, per service (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5).
_KIND_STATUS: dict[Service, dict[ErrorKind, int]] = {
    Service.STORE: {
        ErrorKind.INVALID: UNABLE_TO_PROCESS,  # "cannot understand"
        ErrorKind.UNAVAILABLE: OUT_OF_RESOURCES,
    },
    Service.FIND: {
        ErrorKind.INVALID: IDENTIFIER_DOES_NOT_MATCH,
        ErrorKind.UNAVAILABLE: OUT_OF_RESOURCES,
    },
    Service.RETRIEVE: {
        ErrorKind.INVALID: IDENTIFIER_DOES_NOT_MATCH,
        ErrorKind.UNAVAILABLE: OUT_OF_RESOURCES_MATCHES,
    },
}
#: The same in every service; any other kind (not found, conflict): unable to process.
_KIND_STATUS_ANY: dict[ErrorKind, int] = {
    ErrorKind.FORBIDDEN: NOT_AUTHORISED,
    ErrorKind.UNAUTHENTICATED: NOT_AUTHORISED,
}
#: An unexpected exception (a bug, a database error): the status and what failed.
_UNEXPECTED: dict[Service, tuple[int, str]] = {
    Service.STORE: (OUT_OF_RESOURCES, "the archive could not store it"),
    Service.FIND: (UNABLE_TO_PROCESS, "the query failed"),
    Service.RETRIEVE: (UNABLE_TO_PROCESS, "the retrieve failed"),
}


def failure_status(exc: Exception, service: Service, what: str) -> Dataset:
    """The status answering ``exc`` in ``service``, logged as the failure of ``what``: the one
    place where the handlers map exceptions to DIMSE statuses.

    A domain error is answered by its ``kind`` (an invalid instance's own ``dimse_status``
    where it has a more precise one) with its message; anything else by the service's
    status for an unexpected failure, naming only the exception's type (its message may quote
    values).
    """
    if isinstance(exc, QamqorError):
        if exc.kind is ErrorKind.INVALID:
            logger.warning("%s refused: %s", what, exc.message)
        else:
            logger.error("%s failed: %s", what, exc.message)
        if isinstance(exc, InvalidInstanceError) and service is Service.STORE:
            return status(exc.dimse_status, exc.message)
        code = _KIND_STATUS[service].get(exc.kind) or _KIND_STATUS_ANY.get(
            exc.kind, UNABLE_TO_PROCESS
        )
        return status(code, exc.message)
    logger.error("%s failed: %s", what, type(exc).__name__)
    code, failed = _UNEXPECTED[service]
    return status(code, f"{failed} ({type(exc).__name__})")


def calling_ae(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def set_tcp_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN: disable Nagle's algorithm on the association's socket.

    pynetdicom leaves it on; a DIMSE exchange of small PDUs then waits for delayed ACKs
    (about 40 ms each), which caps a loopback store at about 11 instances per second.
    """
    wrapper = event.assoc.dul.socket
    sock = getattr(wrapper, "socket", None) if wrapper is not None else None
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            logger.warning("cannot set TCP_NODELAY: %s", type(exc).__name__)


def _element(group_element: bytes, vr: bytes, value: bytes) -> bytes:
    """An explicit VR little endian element with a 2-byte length (the meta group's VRs)."""
    return group_element + vr + struct.pack("<H", len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    data = value.encode("ascii")
    return data + pad if len(data) % 2 else data


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> bytes:
    """The File Meta Information (PS3.10 7.1) of a received data set, encoded.

    The same bytes as pydicom's ``write_file_meta_info`` of pynetdicom's ``Event.file_meta``
    with the calling AE title added, written directly: it runs for every C-STORE, and
    building and encoding a ``FileMetaDataset`` cost more than a millisecond of CPU.
    Values that are not ASCII take pydicom's way.
    """
    try:
        body = b"".join(
            (
                b"\x02\x00\x01\x00OB\x00\x00\x02\x00\x00\x00\x00\x01",  # version 00 01
                _element(b"\x02\x00\x02\x00", b"UI", _padded(sop_class_uid, b"\x00")),
                _element(b"\x02\x00\x03\x00", b"UI", _padded(sop_instance_uid, b"\x00")),
                _element(b"\x02\x00\x10\x00", b"UI", _padded(transfer_syntax_uid, b"\x00")),
                _element(b"\x02\x00\x12\x00", b"UI", _padded(_IMPLEMENTATION_UID, b"\x00")),
                _element(b"\x02\x00\x13\x00", b"SH", _padded(_IMPLEMENTATION_VERSION, b" ")),
                _element(b"\x02\x00\x16\x00", b"AE", _padded(source_ae_title, b" "))
                if source_ae_title
                else b"",
            )
        )
    except (UnicodeEncodeError, struct.error):
        meta = create_file_meta(
            sop_class_uid=UID(sop_class_uid),
            sop_instance_uid=UID(sop_instance_uid),
            transfer_syntax=UID(transfer_syntax_uid),
        )
        if source_ae_title:
            meta.SourceApplicationEntityTitle = source_ae_title
        buffer = DicomBytesIO()
        write_file_meta_info(buffer, meta, enforce_standard=True)
        return buffer.getvalue()
    return b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(body)) + body


class DimseHandlers:
    """The node's handlers, bound to one archive and one set of settings."""

    def __init__(
        self,
        *,
        settings: Settings,
        archive: ArchiveService,
        limits: AssociationLimits | None = None,
        prepare_sub_association: Callable[[Any], None] | None = None,
    ) -> None:
        """``limits``: the association limits to apply (none without);
        ``prepare_sub_association``: called with each C-MOVE sub-association once it is
        established (``fastpath.leave_responses_to_sender`` with pynetdicom 3.0.4)."""
        self.settings = settings
        self.archive = archive
        self.access = NodeAccess(settings)
        self.limits = limits
        self.prepare_sub_association = prepare_sub_association

    def bindings(self) -> list[Any]:
        """``evt_handlers`` for ``AE.start_server``."""
        return [
            (evt.EVT_CONN_OPEN, set_tcp_nodelay),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
        ]

    # Association policy -------------------------------------------------------------------
    def on_requested(self, event: Event) -> None:
        """EVT_REQUESTED: refuse calling AE titles that are not known (unless allowed) or
        call from another address than theirs (``access``), then associations beyond the
        limits (``limits``); narrow the contexts to the caller's permissions.

        Mirrors pynetdicom's own rejection (``require_calling_aet``), which cannot express
        "nobody" with an empty list.
        """
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        title = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        peer = str(assoc.requestor.address)
        refusal = self.access.refusal(title, peer)
        if refusal is not None:
            logger.warning("association from %s as %r rejected: %s", peer, title, refusal)
            self._reject(assoc, _REJECT_CALLING_AE)
            return
        busy = self.limits.association_refusal(peer) if self.limits is not None else None
        if busy is not None:
            logger.warning("association from %s as %r rejected: %s", peer, title, busy)
            self._reject(assoc, REJECT_BUSY)
            return
        contexts = self.access.contexts_for(title, assoc.acceptor.supported_contexts)
        if contexts is not None:
            assoc.acceptor.supported_contexts = contexts

    @staticmethod
    def _reject(assoc: Any, reason: tuple[int, int, int]) -> None:
        assoc.acse.send_reject(*reason)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    # Verification -------------------------------------------------------------------------
    def on_echo(self, event: Event) -> int:
        return SUCCESS

    # Storage ------------------------------------------------------------------------------
    def on_store(self, event: Event) -> Dataset | int:
        """C-STORE (pynetdicom's event): see ``store_received``."""
        request = cast(C_STORE, event.request)
        try:
            dataset = event.encoded_dataset(include_meta=False)
        except Exception as exc:  # never raise into pynetdicom (it logs values)
            logger.error("C-STORE data set unreadable: %s", type(exc).__name__)
            reason = f"the data set could not be read ({type(exc).__name__})"
            return status(UNABLE_TO_PROCESS, reason)
        return self.store_received(
            calling_ae_title=calling_ae(event),
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            dataset=dataset,
        )

    def store_received(
        self,
        *,
        calling_ae_title: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        dataset: bytes,
    ) -> Dataset | int:
        """C-STORE: check the data set as received, store it, answer once it is durable.

        ``dataset`` is the data set exactly as received (encoded in ``transfer_syntax_uid``,
        the presentation context's); the UIDs are the request's. Returns the status.
        Called by ``on_store`` and, on the fast path, by the acceptor's own C-STORE-RQ
        decoding (``qamqor.pacs.dimse.fastpath``).
        """
        source = f"dimse:{calling_ae_title}"[:64]
        sop_class_uid, sop_instance_uid = sop_class_uid.strip(), sop_instance_uid.strip()
        uid = sop_instance_uid or "?"
        if not self.access.may(calling_ae_title, "store"):
            logger.warning("C-STORE %s from %s refused: it may not store", uid, source)
            return status(NOT_AUTHORISED, f"{calling_ae_title} may not store here")
        try:
            meta = file_meta_bytes(
                sop_class_uid, sop_instance_uid, transfer_syntax_uid, calling_ae_title
            )
            header = b"".join((b"\x00" * 128, b"DICM", meta))
            try:
                parsed = parse_received(
                    header + dataset, len(header), transfer_syntax_uid, sop_instance_uid
                )
            except InvalidInstanceError:
                raise
            except Exception as exc:  # the data set, not the archive: it cannot be understood
                raise InvalidInstanceError(
                    f"the data set cannot be read ({type(exc).__name__})"
                ) from None
            if parsed.sop_class_uid != sop_class_uid:
                raise InvalidInstanceError(
                    "SOP Class UID of the data set differs from the request's",
                    dimse_status=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
                )
            self.archive.store_instance(parsed, source=source)
        except Exception as exc:  # never raise into pynetdicom (it logs values)
            return failure_status(exc, Service.STORE, f"C-STORE {uid} from {source}")
        return SUCCESS

    # Query --------------------------------------------------------------------------------
    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """C-FIND: match with ``qamqor.pacs.query``; return only the keys asked for."""
        actor = f"dicom:{calling_ae(event)}"
        try:
            query = parse_query(event.identifier, str(event.request.AffectedSOPClassUID))
            with self.archive.session_factory() as session:
                matches = search(session, level=query.level, criteria=query.criteria)
            self._audit(AuditAction.DICOM_FIND, "dicom-query", query, actor, event, matches)
        except Exception as exc:
            yield failure_status(exc, Service.FIND, f"C-FIND from {actor}"), None
            return
        for match in matches:
            _wait_for_the_network(event)
            if event.is_cancelled:
                yield CANCEL, None
                return
            try:
                response = build_response(
                    query, match, retrieve_ae_title=self.settings.dicom_ae_title
                )
            except Exception as exc:
                logger.error("C-FIND response failed: %s", type(exc).__name__)
                yield status(UNABLE_TO_PROCESS, "a match could not be encoded"), None
                return
            yield PENDING, response

    # Retrieve -----------------------------------------------------------------------------
    def on_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE: send the matching instances to a configured AE over a new association."""
        actor = f"dicom:{calling_ae(event)}"
        destination = str(event.move_destination or "").strip()
        remote = self.settings.remote_aes.get(destination)
        if remote is None:
            logger.warning("C-MOVE from %s to unknown AE %r refused", actor, destination)
            yield None, None  # pynetdicom answers 0xA801 (move destination unknown)
            return
        accepted: dict[str, list[PresentationContext]] = {}
        lock = threading.Lock()

        def capture(established: Event) -> None:
            if self.prepare_sub_association is not None:
                self.prepare_sub_association(established.assoc)
            with lock:
                for cx in established.assoc.accepted_contexts:
                    accepted.setdefault(str(cx.abstract_syntax), []).append(cx)

        plan, failure = self._plan(
            event, actor, action=AuditAction.DICOM_MOVE, destination=destination
        )
        needed = [(sop_class, syntax) for _, sop_class, syntax in plan]
        yield (
            remote.host,
            remote.port,
            {
                # A refused identifier still costs an association: pynetdicom only skips it
                # for an unknown destination or zero sub-operations.
                "contexts": retrieve_contexts(needed) or [build_context(VERIFICATION)],
                "evt_handlers": [
                    (evt.EVT_CONN_OPEN, set_tcp_nodelay),
                    (evt.EVT_ESTABLISHED, capture),
                ],
            },
        )
        if failure is not None:
            yield 1
            yield failure, None
            return
        yield len(plan)
        yield from self._send(event, plan, lambda sop_class: accepted.get(sop_class, []))

    def on_get(self, event: Event) -> Iterator[Any]:
        """C-GET: send the matching instances back over the requestor's association."""
        actor = f"dicom:{calling_ae(event)}"
        plan, failure = self._plan(event, actor, action=AuditAction.DICOM_GET, destination="")
        if failure is not None:
            yield 1
            yield failure, None
            return
        yield len(plan)

        def scu_contexts(sop_class: str) -> list[PresentationContext]:
            return [
                cx
                for cx in event.assoc.accepted_contexts
                if str(cx.abstract_syntax) == sop_class and cx.as_scu
            ]

        yield from self._send(event, plan, scu_contexts)

    def _plan(
        self, event: Event, actor: str, *, action: AuditAction, destination: str
    ) -> tuple[list[tuple[str, str, str]], Dataset | None]:
        """``(SOP Instance UID, SOP class, stored syntax)`` to send, or a failure status."""
        try:
            query = parse_retrieve(event.identifier, str(event.request.AffectedSOPClassUID))
            criteria = dict(query.criteria)
            with self.archive.session_factory() as session:
                matches = search(session, level=Level.IMAGE, criteria=criteria)
            plan = [
                (
                    str(m.SOPInstanceUID),
                    str(m.SOPClassUID),
                    str(m.AvailableTransferSyntaxUID),
                )
                for m in matches
            ]
            self._audit(action, "dicom-retrieve", query, actor, event, matches, destination)
        except Exception as exc:
            return [], failure_status(exc, Service.RETRIEVE, f"retrieve from {actor}")
        return plan, None

    def _send(
        self,
        event: Event,
        plan: list[tuple[str, str, str]],
        contexts_for: Callable[[str], list[PresentationContext]],
    ) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        for sop_instance_uid, sop_class, stored in plan:
            if event.is_cancelled:
                yield CANCEL, None
                return
            accepted = [str(cx.transfer_syntax[0]) for cx in contexts_for(sop_class)]
            yield PENDING, self._outgoing(sop_instance_uid, sop_class, stored, accepted)

    def _outgoing(
        self, sop_instance_uid: str, sop_class: str, stored: str, accepted: list[str]
    ) -> Dataset:
        """The instance ready to send in a syntax the peer accepted.

        When it cannot be sent, a stub holding only its UIDs whose "transfer syntax" is no
        transfer syntax: pynetdicom's ``send_c_store`` refuses it before anything goes on the
        wire and counts a failed sub-operation, listed in FailedSOPInstanceUIDList.
        """
        syntax = choose_syntax(stored, accepted)
        if syntax is None:
            logger.warning(
                "%s not sent: the peer accepted no syntax for it (stored %s)",
                sop_instance_uid,
                stored,
            )
            return _stub(sop_instance_uid, sop_class)
        try:
            dataset: Dataset = dcmread(
                io.BytesIO(self.archive.read_instance_bytes(sop_instance_uid))
            )
            if syntax != stored:
                dataset = _reencoded(to_syntax(dataset, syntax), syntax)
            return dataset
        except PacsError as exc:
            logger.error("%s not sent: %s", sop_instance_uid, exc.message)
        except Exception as exc:
            logger.error("%s not sent: %s", sop_instance_uid, type(exc).__name__)
        return _stub(sop_instance_uid, sop_class)

    # Audit --------------------------------------------------------------------------------
    def _audit(
        self,
        action: AuditAction,
        object_type: str,
        query: Query,
        actor: str,
        event: Event,
        matches: list[Dataset],
        destination: str = "",
    ) -> None:
        """One audit event per request: level and UIDs asked for, the studies it disclosed."""
        studies = sorted({str(m.StudyInstanceUID) for m in matches if m.get("StudyInstanceUID")})
        detail = f"{len(matches)} matches" + (f", sent to {destination}" if destination else "")
        if studies:
            listed = " ".join(studies[:_AUDIT_STUDIES])
            more = len(studies) - _AUDIT_STUDIES
            detail += f"; studies: {listed}" + (f" and {more} more" if more > 0 else "")
        with write_session(self.archive.session_factory) as session:
            audit.record(
                session,
                action,
                actor=actor,
                object_type=object_type,
                object_id=query.uids(),
                source=f"dimse {event.assoc.requestor.address}",
                detail=detail,
            )


#: A UID that is not a transfer syntax (the Verification SOP class): marks unsendable stubs.
_NOT_A_TRANSFER_SYNTAX = VERIFICATION


def _stub(sop_instance_uid: str, sop_class: str) -> Dataset:
    stub = Dataset()
    stub.SOPClassUID = sop_class
    stub.SOPInstanceUID = sop_instance_uid
    stub.file_meta = FileMetaDataset()
    stub.file_meta.TransferSyntaxUID = _NOT_A_TRANSFER_SYNTAX
    return stub


def _reencoded(dataset: Dataset, syntax: str) -> Dataset:
    """``dataset`` decoded again from its encoding in ``syntax``.

    pynetdicom checks a data set's original encoding against the context's syntax, so a
    data set read as explicit VR and sent as implicit must really have been encoded so.
    """
    target = UID(syntax)
    buffer = io.BytesIO()
    dcmwrite(
        buffer,
        dataset,
        implicit_vr=target.is_implicit_VR,
        little_endian=target.is_little_endian,
        enforce_file_format=True,
    )
    return dcmread(io.BytesIO(buffer.getvalue()))


#: Responses queued for sending, at most, before a C-FIND handler waits for the network.
_MAX_QUEUED_RESPONSES = 4


def _wait_for_the_network(event: Event) -> None:
    """Keep a C-FIND handler at most a few responses ahead of the socket.

    pynetdicom's DUL thread reads the socket only when it has nothing queued to send, so a
    handler that queues all its responses at once would not see a C-CANCEL until every one is
    sent (and would hold them all in memory). Waiting here lets the C-CANCEL in.
    """
    dul = event.assoc.dul
    while dul.to_provider_queue.qsize() > _MAX_QUEUED_RESPONSES and dul.is_alive():
        if event.assoc.dimse.cancel_req:
            return
        time.sleep(0.0005)
