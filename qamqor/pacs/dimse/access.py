"""Who may associate with the DICOM node, from which address, and for what.

A calling AE title proves nothing: any peer can send any title. So a known node
(``remote_aes``) is accepted only from its own address: its ``networks``, or else the
addresses of its ``host`` (a name is resolved when first needed and again, at most once a
minute, when a call comes from elsewhere). Its ``permissions`` say what it may do there
(``store``, ``query``, ``retrieve``; C-ECHO always): the node accepts only the presentation
contexts of what it may do (``contexts_for``), and refuses a C-STORE from a node that may not
store (``may``), since storage contexts also serve a C-GET's sub-operations. An unknown AE
title is accepted only with ``dicom_accept_unknown_aes``, with every permission, as before; a
known title from a wrong address is refused even then.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable

from pydicom.uid import UID
from pynetdicom.presentation import PresentationContext

from qamqor.core.settings import ALL_DICOM_PERMISSIONS, DicomPermission, RemoteAE, Settings
from qamqor.pacs.dimse.contexts import VERIFICATION, storage_sop_classes

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], list[str]]

#: Least time between two look-ups of a known node's host name.
_RESOLVE_INTERVAL = 60.0
_STORAGE = frozenset(storage_sop_classes())


def peer_address(text: str) -> IPAddress | None:
    """The peer's IP address (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve(host: str) -> list[str]:
    """The IP addresses of a host name (none when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        logger.warning("DICOM node host %r does not resolve: %s", host, type(exc).__name__)
        return []
    return sorted({str(info[4][0]) for info in infos})


def permission_of(abstract_syntax: str) -> DicomPermission | None:
    """The permission a presentation context's abstract syntax needs; None: C-ECHO."""
    if abstract_syntax == VERIFICATION:
        return None
    if abstract_syntax in _STORAGE:
        return "store"
    name = UID(abstract_syntax).name
    if name.endswith(("MOVE", "GET")):
        return "retrieve"
    return "query"


class _KnownNode:
    """A node of ``remote_aes``: where it may call from, what it may do."""

    def __init__(self, title: str, remote: RemoteAE, resolver: Resolver) -> None:
        self.title = title
        self.permissions: frozenset[DicomPermission] = frozenset(remote.permissions)
        self._host = remote.host
        self._resolver = resolver
        self._lock = threading.Lock()
        self._resolved_at: float | None = None
        literal = peer_address(remote.host)
        if remote.networks is not None:
            self._networks = [ipaddress.ip_network(n, strict=False) for n in remote.networks]
            self._fixed = True
        elif literal is not None:
            self._networks = [ipaddress.ip_network(literal)]
            self._fixed = True
        else:
            self._networks = []
            self._fixed = False

    def _matches(self, address: IPAddress) -> bool:
        return any(address in network for network in self._networks)

    def admits(self, address: IPAddress | None) -> bool:
        if address is None:
            return False
        if self._fixed:
            return self._matches(address)
        with self._lock:
            if self._resolved_at is not None and self._matches(address):
                return True
            now = time.monotonic()
            if self._resolved_at is None or now - self._resolved_at >= _RESOLVE_INTERVAL:
                self._resolved_at = now
                self._networks = [
                    ipaddress.ip_network(a)
                    for a in (peer_address(r) for r in self._resolver(self._host))
                    if a is not None
                ]
            return self._matches(address)

    def where(self) -> str:
        if self._fixed or self._resolved_at is not None:
            shown = ", ".join(str(n) for n in self._networks[:4])
            return shown + (" ..." if len(self._networks) > 4 else "") or "nowhere"
        return self._host


class NodeAccess:
    """The settings' association policy: ``refusal`` at association, ``may`` afterwards."""

    def __init__(self, settings: Settings, resolver: Resolver = resolve) -> None:
        self.accept_unknown = settings.dicom_accept_unknown_aes
        self._known = {
            title.strip(): _KnownNode(title.strip(), remote, resolver)
            for title, remote in settings.remote_aes.items()
        }

    def is_known(self, title: str) -> bool:
        return title in self._known

    def refusal(self, title: str, peer: str) -> str | None:
        """Why ``title`` calling from address ``peer`` must be rejected, or None."""
        known = self._known.get(title)
        if known is None:
            return None if self.accept_unknown else "unknown calling AE title"
        if known.admits(peer_address(peer)):
            return None
        return f"{title} may call from {known.where()} only"

    def permissions(self, title: str) -> frozenset[DicomPermission]:
        """What an accepted calling AE title may do."""
        known = self._known.get(title)
        return ALL_DICOM_PERMISSIONS if known is None else known.permissions

    def may(self, title: str, permission: DicomPermission) -> bool:
        return permission in self.permissions(title)

    def contexts_for(
        self, title: str, supported: Iterable[PresentationContext]
    ) -> list[PresentationContext] | None:
        """The supported contexts an accepted ``title`` may use, or None for all of them.

        Storage contexts stay for a node that may retrieve but not store: a C-GET sends its
        instances over them (its C-STOREs to us are refused by the handler).
        """
        permissions = self.permissions(title)
        if permissions == ALL_DICOM_PERMISSIONS:
            return None
        allowed: set[DicomPermission] = set(permissions)
        if "retrieve" in permissions:
            allowed.add("store")
        kept = []
        for cx in supported:
            needed = permission_of(str(cx.abstract_syntax))
            if needed is None or needed in allowed:
                kept.append(cx)
        return kept
