"""What every acceptor association gets, on both paths of the node (``fastpath`` and
pynetdicom's own): PDUs bounded before they are read, and the connection's place under the
association limits held until the association's thread ends.

This is a security fix, not a speed trick. pynetdicom reads whatever length a PDU's header
claims (up to 4 GiB): a 6-byte header took a process's memory up by a gigabyte, a few of them
got ``qamqor serve`` killed. pynetdicom has no public hook for the reading of PDUs, so the DUL
provider's ``_read_pdu_data`` is replaced (``BoundedDUL``): the length is checked against the
largest the PDU's type may have (``pdu_limits``: two integer comparisons per PDU) before
anything more is read; a longer one is answered with an A-ABORT (Evt19, as for an invalid PDU,
so the state machine sends it and the association ends as pynetdicom ends it), logged with the
peer's address, and whatever the peer sends after it is read and dropped, 64 KiB at a time,
until it closes the connection or the ARTIM timer ends it.

Written against pynetdicom 3.0.4 (``WRITTEN_FOR``). The pynetdicom internals it uses:

* ``DULServiceProvider._read_pdu_data()``, replaced: the one place the DUL reads its socket,
  called by ``_is_transport_event`` in the DUL thread's loop; with ``_decode_pdu(bytestream)``,
  ``_recv_pdu`` (the decoded PDUs), ``event_queue``, ``socket`` (an ``AssociationSocket``,
  ``recv(n)``), ``state_machine.current_state``;
* ``DULServiceProvider.receive_pdu(wait, timeout)``, extended: a wait ends once the connection
  is closed (a peer that had gone held its place for the whole ACSE timeout);
* ``RequestHandler._create_association()``, called by ``RequestHandler.handle``: where
  ``node._RequestHandler`` gets each acceptor association before it starts (``guarded``);
* ``Association.dul``, replaced before the association starts (its ``_idle_timer`` and
  ``artim_timer`` timeouts carried over); ``DIMSEServiceProvider.dul`` and ``ACSE.dul`` are
  properties that read it;
* the association's class, made ``AcceptorAssociation`` before it starts: ``Association`` has
  no ``run`` of its own (``threading.Thread.run`` runs its target, ``run_reactor``).

``check_pynetdicom`` runs whenever a node is made. Where one of these internals is missing or
no longer where PDUs are read, the node refuses to start (``UnsupportedPynetdicom``): it never
falls back to pynetdicom's unbounded reader. Where the pynetdicom functions it replaces or
follows differ from 3.0.4's (``FINGERPRINTS``), it logs an error at every start and bounds PDUs
all the same: someone has to look. ``python -m qamqor.pacs.dimse.release_check`` reports on
both this module and the fast path (how to check a new release: ``fastpath``'s docstring).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import struct
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import pynetdicom
from pynetdicom import AE
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import RequestHandler

from qamqor.pacs.dimse.load import AcceptorLoad

if TYPE_CHECKING:
    from pynetdicom.transport import AssociationSocket

logger = logging.getLogger(__name__)
# The logger pynetdicom's reader writes to (the reader below writes the same messages there).
_dul_logger = logging.getLogger("pynetdicom.dul")

#: The pynetdicom release this module was written against and checked with.
WRITTEN_FOR = "3.0.4"
#: SHA-256 (first 16 hex digits) of the source of each pynetdicom function this module
#: replaces or whose behaviour it relies on, in pynetdicom 3.0.4.
FINGERPRINTS = {
    "dul.DULServiceProvider._read_pdu_data": "19f2d4e38c13c835",
    "dul.DULServiceProvider._is_transport_event": "8725ed03bb8fbdef",
    "dul.DULServiceProvider.receive_pdu": "fa67339834ca998c",
    "transport.RequestHandler.handle": "034823fb4df3a874",
    "transport.RequestHandler._create_association": "05c8d12b79863cdb",
}

#: The largest PDU peers may send us; bigger PDUs mean fewer round trips for large images.
MAX_PDU_SIZE = 131072
#: The largest A-ASSOCIATE-RQ (or -AC) read: 128 presentation contexts of 20 transfer syntaxes
#: each and every kind of user information fit several times over.
MAX_ASSOCIATE_PDU_SIZE = 1 << 20
#: A-ASSOCIATE-RJ, A-RELEASE-RQ and -RP, A-ABORT: their length is always 4 (PS3.8 9.3).
_FIXED_PDU_LENGTH = 4
_PDU_HEADER = struct.Struct(">BBL")
_PDU_TYPES = frozenset(range(0x01, 0x08))
_DISCARD_CHUNK = 65536
#: How often a wait for the peer's next primitive looks whether the connection was closed.
_CLOSED_CHECK = 0.25


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


class BoundedDUL(DULServiceProvider):
    """pynetdicom's DUL provider, every PDU's length checked before the PDU is read.

    ``_receive`` and ``_take_pdu`` are the steps the fast path reads and hands PDUs over
    with (``fastpath._EventDrivenDUL``); the checks stay here, for both paths."""

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

    def _read_pdu_data(self) -> None:
        """pynetdicom 3.0.4's ``_read_pdu_data`` (same events for the same failures), the
        PDU's length checked before the rest of it is read."""
        if self._discarding:
            self._discard_input()
            return
        transport = cast("AssociationSocket", self.socket)
        try:
            header = self._receive(transport, 6)
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
            body = self._receive(transport, pdu_length)
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
        self._take_pdu(pdu_type, header, body)

    def _receive(self, transport: AssociationSocket, count: int) -> bytearray | memoryview:
        """``count`` bytes from the socket, fewer if the peer closed the connection
        (pynetdicom's transport reads 4 KiB at a time)."""
        return transport.recv(count)

    def _take_pdu(self, pdu_type: int, header: bytearray | memoryview, body: Any) -> None:
        """Decode a whole PDU and queue it with its event, as pynetdicom does."""
        try:
            pdu, event = self._decode_pdu(bytearray(header) + body)
            self.event_queue.put(event)
        except Exception as exc:
            _dul_logger.error("Unable to decode the received PDU data")
            _dul_logger.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

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


class AcceptorAssociation(Association):
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


def replace_dul(assoc: Association, dul: DULServiceProvider) -> None:
    """Put ``dul`` in the place of a new, not yet started association's DUL provider."""
    stock = assoc.dul
    dul.socket = stock.socket
    # Events queued already (the socket's Evt5, "transport connection indication") go along.
    dul.event_queue = stock.event_queue
    dul._idle_timer.timeout = stock._idle_timer.timeout
    dul.artim_timer.timeout = stock.artim_timer.timeout
    assoc.dul = dul


def guarded(
    assoc: Association,
    load: AcceptorLoad | None,
    slot: int | None,
    *,
    dul: type[BoundedDUL] = BoundedDUL,
    association: type[AcceptorAssociation] = AcceptorAssociation,
) -> AcceptorAssociation:
    """A new, not yet started acceptor association with a bounded DUL provider (``dul``, a
    ``BoundedDUL``) that holds ``slot`` of ``load`` until its thread ends; ``association``
    (an ``AcceptorAssociation``) its class."""
    replace_dul(assoc, dul(assoc))
    assoc.__class__ = association
    accepted = cast(AcceptorAssociation, assoc)
    accepted._load = load
    accepted._slot = slot
    return accepted


# Checks of the installed pynetdicom ------------------------------------------------------------
class UnsupportedPynetdicom(RuntimeError):
    """The installed pynetdicom lacks internals that PDUs cannot be bounded without."""


def _source(function: Any) -> str | None:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return None


def fingerprint(function: Callable[..., Any]) -> str | None:
    """SHA-256 (first 16 hex digits) of a function's source; None where there is none."""
    source = _source(function)
    return None if source is None else hashlib.sha256(source.encode()).hexdigest()[:16]


def pynetdicom_function(name: str) -> Callable[..., Any] | None:
    """The pynetdicom function ``name`` names (``module.Class.function``), or None."""
    module_name, *path = name.split(".")
    try:
        found: Any = importlib.import_module(f"pynetdicom.{module_name}")
    except ImportError:
        return None
    for part in path:
        found = inspect.getattr_static(found, part, None)
        if found is None:
            return None
    if isinstance(found, staticmethod | classmethod):
        found = found.__func__
    return found if callable(found) else None


def changed_functions(expected: Mapping[str, str]) -> list[str]:
    """The functions of ``expected`` (name: fingerprint) that the installed pynetdicom lacks
    or has in another version."""
    changed = []
    for name, expected_print in expected.items():
        function = pynetdicom_function(name)
        if function is None or fingerprint(function) != expected_print:
            changed.append(name)
    return changed


def _parameters(function: Any) -> list[str] | None:
    try:
        return list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


def missing_internals() -> list[str]:
    """What the installed pynetdicom lacks of the internals listed in the docstring, each
    in a few words (empty: nothing)."""
    problems = []
    dul_class = DULServiceProvider
    methods = {
        "_read_pdu_data": ["self"],
        "_decode_pdu": ["self", "bytestream"],
        "receive_pdu": ["self", "wait", "timeout"],
        "_is_transport_event": ["self"],
    }
    for name, parameters in methods.items():
        if _parameters(getattr(dul_class, name, None)) != parameters:
            problems.append(f"DULServiceProvider.{name}({', '.join(parameters[1:])}) is gone")
    # Where PDUs are read: in _read_pdu_data only, which _is_transport_event calls, on every
    # association RequestHandler.handle makes with _create_association.
    dul_sources = {
        name: _source(function)
        for name, function in vars(dul_class).items()
        if inspect.isfunction(function)
    }
    handle = _source(getattr(RequestHandler, "handle", None))
    if handle is None or None in dul_sources.values():
        if pynetdicom.__version__ != WRITTEN_FOR:  # 3.0.4's pass the checks below
            problems.append("its source cannot be read, so where it reads PDUs cannot be checked")
    else:
        if "self._read_pdu_data()" not in (dul_sources.get("_is_transport_event") or ""):
            problems.append("the DUL no longer reads PDUs with _read_pdu_data")
        readers = sorted(
            name
            for name, source in dul_sources.items()
            if name != "_read_pdu_data" and ".recv(" in (source or "")
        )
        if readers:
            problems.append(f"the DUL reads its socket in {', '.join(readers)} too")
        if "self._create_association()" not in handle:
            problems.append("RequestHandler.handle no longer calls _create_association")
    if _parameters(getattr(RequestHandler, "_create_association", None)) != ["self"]:
        problems.append("RequestHandler._create_association() is gone")
    if "run" in vars(Association):
        problems.append("Association has a run method of its own")
    for owner in (DIMSEServiceProvider, ACSE):
        if not isinstance(inspect.getattr_static(owner, "dul", None), property):
            problems.append(f"{owner.__name__}.dul is no longer a property")
    problems += _missing_attributes()
    return problems


def _missing_attributes() -> list[str]:
    """The attributes of a new association's DUL provider that the guard uses, if missing."""
    try:
        dul = Association(AE(), "acceptor").dul
    except Exception as exc:  # an unknown pynetdicom: say so, do not fail here
        return [f"an acceptor association cannot be made to look at ({type(exc).__name__})"]
    names = ("socket", "event_queue", "_recv_pdu", "state_machine", "_idle_timer", "artim_timer")
    missing = [f"DULServiceProvider.{name}" for name in names if not hasattr(dul, name)]
    for timer in ("_idle_timer", "artim_timer"):
        if hasattr(dul, timer) and not hasattr(getattr(dul, timer), "timeout"):
            missing.append(f"DULServiceProvider.{timer}.timeout")
    return [f"{name} is gone" for name in missing]


def check_pynetdicom() -> None:
    """Refuse (``UnsupportedPynetdicom``) where PDUs cannot be bounded with the installed
    pynetdicom; log an error where what the guard replaces or follows changed."""
    version = pynetdicom.__version__
    missing = missing_internals()
    if missing:
        raise UnsupportedPynetdicom(
            f"pynetdicom {version}: the DICOM node does not start without its bounded PDU "
            f"reader, which needs internals this version lacks: {'; '.join(missing)}. Install "
            f"pynetdicom {WRITTEN_FOR} (pyproject pins it) or port qamqor/pacs/dimse/guard.py "
            "(see qamqor/pacs/dimse/fastpath.py on checking a new release)."
        )
    changed = changed_functions(FINGERPRINTS)
    if changed:
        logger.error(
            "pynetdicom %s: %s differ from pynetdicom %s's, which the bounded PDU reader "
            "(qamqor/pacs/dimse/guard.py) was written against. PDUs are still bounded; check "
            "the guard against this version: python -m qamqor.pacs.dimse.release_check",
            version,
            ", ".join(changed),
            WRITTEN_FOR,
        )
