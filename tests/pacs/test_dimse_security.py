"""The DICOM node against hostile or misconfigured peers: PDUs longer than they may be, too
many associations, known AE titles from the wrong address, per-node permissions, and DICOM
TLS. Run on SQLite and PostgreSQL, on both paths of the node (the fast path and pynetdicom's
own handlers and reactors): the guards hold on either.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from qamqor.core.settings import RemoteAE, Settings
from qamqor.pacs.dimse import DicomNode, guard
from qamqor.pacs.dimse import node as node_module
from qamqor.pacs.dimse.fastpath import leave_responses_to_sender
from qamqor.runtime import Runtime
from tests.conftest import BOTH_PATHS, free_port

pytestmark = [pytest.mark.dcmtk, BOTH_PATHS]

AE_TITLE = "QAMQOR"
SCU = "TESTSCU"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
GIB = 1 << 30
CT_SMALL = get_testdata_file("CT_small.dcm")


def dcmtk(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), env=DCMTK_ENV, capture_output=True, text=True, timeout=120)


StartNode = Callable[..., DicomNode]


@pytest.fixture
def start_node(runtime: Runtime, dicom_fast_path: str) -> Iterator[StartNode]:
    """Start nodes with changes to the test settings; stopped afterwards."""
    started: list[DicomNode] = []

    def start(**update: Any) -> DicomNode:
        values = {
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "dicom_ae_title": AE_TITLE,
            "remote_aes": {SCU: RemoteAE(host="127.0.0.1", port=free_port())},
            "dicom_accept_unknown_aes": False,
            **update,
        }
        settings = Settings(**{**runtime.settings.model_dump(), **values})
        node = DicomNode(settings=settings, archive=runtime.archive)
        assert node.fast_path is (dicom_fast_path == "auto")
        node.start()
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.stop()


def echo(node: DicomNode, title: str = SCU) -> subprocess.CompletedProcess[str]:
    return dcmtk("echoscu", "-aet", title, "-aec", AE_TITLE, "127.0.0.1", str(node.port))


def store(node: DicomNode, path: str, title: str = SCU) -> subprocess.CompletedProcess[str]:
    return dcmtk("storescu", "-aet", title, "-aec", AE_TITLE, "127.0.0.1", str(node.port), path)


def associate(
    node: DicomNode,
    title: str = SCU,
    *,
    contexts: tuple[str, ...] = (Verification, CTImageStorage),
    source: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> Any:
    ae = AE(ae_title=title)
    for abstract_syntax in contexts:
        ae.add_requested_context(abstract_syntax, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1", node.port, ae_title=AE_TITLE,
        bind_address=(source, 0) if source else None,
        tls_args=(tls, "localhost") if tls else None,
    )  # fmt: skip
    if assoc.is_established:
        leave_responses_to_sender(assoc)
    return assoc


def new_instance() -> Dataset:
    ds = dcmread(CT_SMALL)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def read_until_closed(sock: socket.socket, seconds: float = 5) -> bytes:
    """What the node sends before it closes the connection (at most ``seconds``)."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return received


def is_a_abort(data: bytes) -> bool:
    return len(data) >= 10 and data[0] == 0x07 and data[2:6] == b"\x00\x00\x00\x04"


# Bounded PDUs ----------------------------------------------------------------------------------
def test_pdu_headers_claiming_gigabytes_are_aborted_without_the_memory(
    start_node: StartNode,
) -> None:
    """A 6-byte header claiming 1 GiB or 4 GiB, before an association and in one: the node
    allocates nothing of it, aborts, and goes on serving (it allocated the claimed length at
    once, and waited for it)."""
    node = start_node()
    before = rss_mib()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, GIB))  # an A-ASSOCIATE-RQ of 1 GiB
        answer = read_until_closed(sock)
        grown = rss_mib() - before
    assert grown < 64, f"VmRSS grew by {grown:.0f} MiB"
    assert is_a_abort(answer), answer

    answers = []
    for pdu_type, length in [(0x04, 0xFFFFFFFF), (0x07, GIB)]:  # P-DATA-TF, A-ABORT
        with socket.create_connection(("127.0.0.1", node.port)) as sock:
            sock.sendall(struct.pack(">BBL", pdu_type, 0, length))
            answers.append(read_until_closed(sock))
    established = []
    for pdu_type, length in [(0x04, GIB), (0x01, 0xFFFFFFFF), (0x05, GIB)]:
        assoc = associate(node)
        assert assoc.is_established
        assoc.dul.socket.socket.sendall(struct.pack(">BBL", pdu_type, 0, length))
        established.append(assoc)
    aborted = [wait_for(lambda a=assoc: a.is_aborted) for assoc in established]
    grown = rss_mib() - before
    assert grown < 64, f"VmRSS grew by {grown:.0f} MiB"
    assert all(is_a_abort(answer) for answer in answers), answers
    assert aborted == [True] * 3
    for assoc in established:
        if assoc.is_established:
            assoc.abort()

    # The node keeps serving: an echo and a store right after.
    assert echo(node).returncode == 0
    assert store(node, CT_SMALL).returncode == 0
    assert node.handlers.archive.count()["instances"] == 1


def test_a_p_data_longer_than_the_maximum_pdu_length_is_aborted(start_node: StartNode) -> None:
    node = start_node()
    assoc = associate(node)
    assert assoc.is_established
    # The node's end reads PDUs with the guard's bounded reader on either path (on the plain
    # one, nothing of the fast path's).
    assert wait_for(lambda: len(node.ae.active_associations) == 1)
    (accepted,) = node.ae.active_associations
    assert isinstance(accepted.dul, guard.BoundedDUL)
    assert (type(accepted.dul) is guard.BoundedDUL) is not node.fast_path
    assert assoc.acceptor.maximum_length == node_module.MAX_PDU_SIZE
    try:
        # PDUs of exactly the maximum length (pynetdicom fills them) are taken.
        big = new_instance()
        big.PixelData = os.urandom(3 * node_module.MAX_PDU_SIZE)
        big.Rows, big.Columns = 768, 256
        assert assoc.send_c_store(big).Status == 0x0000
        # A whole C-STORE in one PDU two bytes longer (PDU lengths are even here): aborted,
        # not stored.
        pdu = store_in_one_pdu(assoc, new_instance(), node_module.MAX_PDU_SIZE + 2)
        assoc.dul.socket.socket.sendall(pdu)
        assert wait_for(lambda: assoc.is_aborted)
    finally:
        if assoc.is_established:
            assoc.abort()
    assert node.handlers.archive.count()["instances"] == 1
    assert echo(node).returncode == 0


def store_in_one_pdu(assoc: Any, ds: Dataset, pdu_length: int) -> bytes:
    """A P-DATA-TF of ``pdu_length`` (the header's) holding a whole C-STORE-RQ of ``ds``,
    Data Set Trailing Padding making up the length."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    (context_id,) = [
        cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage
    ]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    encoded = buffer.getvalue()
    data = encoded[144 + int.from_bytes(encoded[140:144], "little") :]  # after the meta group

    def items(dataset: bytes) -> list[bytes]:
        request = C_STORE()
        request.MessageID = 7
        request.AffectedSOPClassUID = ds.SOPClassUID
        request.AffectedSOPInstanceUID = ds.SOPInstanceUID
        request.Priority = 2
        request.DataSet = io.BytesIO(dataset)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        return [
            struct.pack(">LB", len(value) + 1, cid) + value
            for p in message.encode_msg(context_id, 1 << 30)
            for cid, value in p.presentation_data_value_list
        ]

    padding = pdu_length - sum(map(len, items(data))) - 12
    assert padding >= 0 and padding % 2 == 0
    padded = data + b"\xfc\xff\xfc\xffOB\x00\x00" + struct.pack("<I", padding) + b"\x00" * padding
    body = b"".join(items(padded))
    assert len(body) == pdu_length
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


# Association limits ----------------------------------------------------------------------------
def rejection(assoc: Any) -> tuple[int | None, ...]:
    assert assoc.is_rejected
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


BUSY = (0x02, 0x03, 0x02)  # transient, service provider (presentation), local limit exceeded


def test_associations_beyond_the_per_peer_and_the_total_limits_are_rejected(
    start_node: StartNode,
) -> None:
    node = start_node(
        remote_aes={SCU: RemoteAE(host="127.0.0.1", port=104, networks=["127.0.0.0/8"])},
        dicom_max_associations=3,
        dicom_max_associations_per_peer=2,
    )

    def open_count() -> int:
        return int(node.limits.load.total())

    held = [associate(node), associate(node)]
    assert all(a.is_established for a in held)

    # A third from the same address: rejected, transient; another address is served.
    third = associate(node)
    assert rejection(third) == BUSY
    assert wait_for(lambda: open_count() == 2)
    other = associate(node, source="127.0.0.2")
    assert other.is_established
    held.append(other)

    # Three open: a fourth from anywhere is rejected; after a release it is served.
    fourth = associate(node, source="127.0.0.3")
    assert rejection(fourth) == BUSY
    refused = echo(node)
    assert "Local Limit Exceeded" in refused.stdout + refused.stderr
    held.pop(0).release()
    assert wait_for(lambda: open_count() == 2)
    fourth = associate(node, source="127.0.0.3")
    assert fourth.is_established
    held.append(fourth)

    # Beyond twice the limits connections are closed before anything is read.
    idle = [socket.create_connection(("127.0.0.1", node.port), source_address=("127.0.0.4", 0))
            for _ in range(3)]  # fmt: skip
    try:
        assert wait_for(lambda: open_count() == 6)
        with socket.create_connection(("127.0.0.1", node.port)) as last:
            last.sendall(struct.pack(">BBL", 0x01, 0, 4) + b"\x00" * 4)
            assert read_until_closed(last) == b""  # no A-ASSOCIATE-RJ, no A-ABORT: closed
    finally:
        for sock in idle:
            sock.close()
    for assoc in held:
        assoc.release()
    assert wait_for(lambda: open_count() == 0)
    assert echo(node).returncode == 0


# Known nodes: address and permissions ----------------------------------------------------------
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)


def test_a_known_ae_title_from_another_address_is_rejected(
    start_node: StartNode, runtime: Runtime, shared_dicom_dir: Path, tmp_path: Path
) -> None:
    from qamqor.pacs.parsing import parse_part10

    path = next(iter(sorted(shared_dicom_dir.glob("*.dcm"))))
    runtime.archive.store_instance(parse_part10(path.read_bytes()), source="test")
    name = str(dcmread(path, stop_before_pixels=True).PatientName)
    # VIEWER is at 10.0.0.5 (nothing is ever sent there); someone on 127.0.0.1 says "VIEWER".
    viewer = RemoteAE(host="10.0.0.5", port=104)
    out = tmp_path / "found"
    out.mkdir()
    for accept_unknown in (False, True):
        node = start_node(remote_aes={"VIEWER": viewer}, dicom_accept_unknown_aes=accept_unknown)
        posing = associate(node, "VIEWER", contexts=(PatientRootQueryRetrieveInformationModelFind,))
        assert rejection(posing) == CALLING_AE_NOT_RECOGNISED
        found = dcmtk(
            "findscu", "-P", "-aet", "VIEWER", "-aec", AE_TITLE, "-k", "QueryRetrieveLevel=PATIENT",
            "-k", "PatientName=*", "-k", "PatientID", "-X", "-od", str(out),
            "127.0.0.1", str(node.port),
        )  # fmt: skip
        assert found.returncode != 0
        assert "Calling AE Title Not Recognized" in found.stdout + found.stderr
        assert name not in found.stdout + found.stderr and not list(out.iterdir())
        # An unknown title is still let in when unknown titles are allowed.
        assert (echo(node, "STRANGER").returncode == 0) is accept_unknown

    # The same title at its real address, or with a network that holds the caller: accepted.
    for remote in (
        RemoteAE(host="127.0.0.1", port=104),
        RemoteAE(host="localhost", port=104),
        RemoteAE(host="10.0.0.5", port=104, networks=["10.0.0.0/24", "127.0.0.0/8"]),
    ):
        node = start_node(remote_aes={"VIEWER": remote})
        assert echo(node, "VIEWER").returncode == 0, remote
    # A network list without the caller: rejected.
    node = start_node(remote_aes={"VIEWER": RemoteAE(host="127.0.0.1", port=104, networks=[])})
    assert echo(node, "VIEWER").returncode != 0


def test_settings_say_what_is_wrong_with_a_node() -> None:
    with pytest.raises(ValidationError, match="not an IP address or network"):
        RemoteAE(host="10.0.0.5", port=104, networks=["10.0.0.0/33"])
    with pytest.raises(ValidationError, match="store"):
        RemoteAE(host="10.0.0.5", port=104, permissions={"delete"})
    assert RemoteAE(host="h", port=1, networks=["10.1.2.3/24"]).networks == ["10.1.2.0/24"]
    with pytest.raises(ValidationError, match="both QAMQOR_DICOM_TLS_CERT and"):
        Settings(dicom_tls_cert="cert.pem")
    with pytest.raises(ValidationError, match="needs QAMQOR_DICOM_TLS_CA"):
        Settings(dicom_tls_cert="c.pem", dicom_tls_key="k.pem", dicom_tls_require_client_cert=True)
    with pytest.raises(ValidationError, match="AE title"):
        Settings(remote_aes={"A" * 17: {"host": "h", "port": 104}})
    assert Settings(dicom_tls_cert="", dicom_tls_key=" ").dicom_tls_cert is None  # empty: off
    assert Settings().dicom_host == "127.0.0.1"


def no_context(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether a DCMTK tool says the node accepted no presentation context for its request."""
    text = result.stdout + result.stderr
    return re.search(r"no (acceptable |adequate )?presentation context", text, re.I) is not None


def test_known_nodes_do_only_what_they_may(
    start_node: StartNode, runtime: Runtime, tmp_path: Path
) -> None:
    def at_home(*permissions: str, port: int = 104) -> RemoteAE:
        return RemoteAE(host="127.0.0.1", port=port, permissions=set(permissions))

    move_port = free_port()
    node = start_node(
        remote_aes={
            "STOREONLY": at_home("store", port=move_port),
            "QUERYONLY": at_home("query"),
            "RETRIEVER": at_home("query", "retrieve"),
        }
    )
    archive = node.handlers.archive
    qr = (
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet,
    )

    # Store only: stores; its query and retrieve contexts are rejected, so C-FIND, C-MOVE
    # and C-GET cannot even be asked.
    assert store(node, CT_SMALL, "STOREONLY").returncode == 0
    assert archive.count()["instances"] == 1
    assoc = associate(node, "STOREONLY", contexts=(Verification, *qr))
    assert assoc.is_established
    assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == {Verification}
    assert {str(cx.abstract_syntax) for cx in assoc.rejected_contexts} == set(qr)
    with pytest.raises(ValueError, match="presentation context"):
        assoc.send_c_find(Dataset(), PatientRootQueryRetrieveInformationModelFind)
    assoc.release()
    ct = dcmread(CT_SMALL, stop_before_pixels=True)
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ct.StudyInstanceUID}"]
    address = ["127.0.0.1", str(node.port)]
    for tool, extra in (("findscu", ["-k", "PatientName"]), ("getscu", []),
                        ("movescu", ["-aem", "STOREONLY", "--port", str(move_port)])):  # fmt: skip
        out = tmp_path / tool
        out.mkdir()
        result = dcmtk(tool, "-S", "-aet", "STOREONLY", "-aec", AE_TITLE, *extra, *keys,
                       "-od", str(out), *address)  # fmt: skip
        assert result.returncode != 0, tool
        assert no_context(result), (tool, result.stdout + result.stderr)
        assert not list(out.iterdir()), tool

    # Query only: finds; cannot store (no storage context accepted) nor get.
    found = dcmtk("findscu", "-S", "-aet", "QUERYONLY", "-aec", AE_TITLE, *keys, "-k",
                  "PatientName", "-X", "-od", str(tmp_path), *address)  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert len(list(tmp_path.glob("rsp*.dcm"))) == 1
    other = new_instance()
    other.save_as(tmp_path / "other.dcm")
    refused = store(node, str(tmp_path / "other.dcm"), "QUERYONLY")
    assert refused.returncode != 0
    assert no_context(refused), refused.stdout + refused.stderr
    got = dcmtk("getscu", "-S", "-aet", "QUERYONLY", "-aec", AE_TITLE, *keys, "-od",
                str(tmp_path), *address)  # fmt: skip
    assert got.returncode != 0 and no_context(got), got.stdout + got.stderr

    # Query and retrieve: gets (over storage contexts, in the SCP role), but a C-STORE of its
    # own over them is refused as not authorised.
    out = tmp_path / "got"
    out.mkdir()
    got = dcmtk("getscu", "-S", "-aet", "RETRIEVER", "-aec", AE_TITLE, *keys, "-od", str(out),
                *address)  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert len(list(out.iterdir())) == 1
    assoc = associate(node, "RETRIEVER")
    try:
        response = assoc.send_c_store(other)
        assert response.Status == 0x0124
        assert "RETRIEVER may not store" in response.ErrorComment
    finally:
        assoc.release()
    assert archive.count()["instances"] == 1


# DICOM TLS ---------------------------------------------------------------------------------------
def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_certificates(folder: Path) -> None:
    """A throwaway CA; a server and a client certificate it signs; a self-signed client."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is missing: apt-get install openssl")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "leaf.ext").write_text(LEAF_EXTENSIONS)
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Qamqor test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)  # fmt: skip
    for name in ("server", "client"):
        openssl("req", *curve, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "leaf.ext", "-out", f"{name}.pem",
                cwd=folder)  # fmt: skip
    openssl("req", "-x509", *curve, "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2",
            "-subj", "/CN=rogue", cwd=folder)  # fmt: skip


def client_context(folder: Path, certificate: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=folder / "ca.pem")
    if certificate:
        context.load_cert_chain(folder / f"{certificate}.pem", folder / f"{certificate}.key")
    return context


def test_dicom_tls_serves_clients_with_a_certificate_of_the_ca_only(
    start_node: StartNode, tmp_path: Path
) -> None:
    make_certificates(tmp_path)
    node = start_node(
        dicom_tls_cert=tmp_path / "server.pem",
        dicom_tls_key=tmp_path / "server.key",
        dicom_tls_ca=tmp_path / "ca.pem",
        dicom_tls_require_client_cert=True,
    )
    assoc = associate(node, tls=client_context(tmp_path, "client"))
    assert assoc.is_established
    try:
        assert isinstance(assoc.dul.socket.socket, ssl.SSLSocket)
        assert assoc.send_c_echo().Status == 0x0000
        stored = new_instance()
        assert assoc.send_c_store(stored).Status == 0x0000
    finally:
        assoc.release()
    data = node.handlers.archive.read_instance_bytes(stored.SOPInstanceUID)
    assert dcmread(io.BytesIO(data)).SOPInstanceUID == stored.SOPInstanceUID

    # Plain DICOM to the TLS port, no client certificate, one the CA did not sign: refused.
    assert not associate(node).is_established
    assert echo(node).returncode != 0
    assert not associate(node, tls=client_context(tmp_path, None)).is_established
    assert not associate(node, tls=client_context(tmp_path, "rogue")).is_established
    # The refusals leave it serving.
    assoc = associate(node, tls=client_context(tmp_path, "client"))
    assert assoc.is_established
    assoc.release()
    assert wait_for(lambda: node.limits.load.total() == 0)
