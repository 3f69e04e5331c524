"""Which path the DICOM node takes: the fast path with exactly the pynetdicom release it was
written for and ``QAMQOR_DICOM_FAST_PATH=auto``, pynetdicom's own handlers otherwise; and the
guard that bounds PDUs on both, which refuses to start rather than read PDUs unbounded.
"""

from __future__ import annotations

import logging
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification

from qamqor.core.settings import RemoteAE
from qamqor.pacs.dimse import DicomNode, fastpath, guard
from qamqor.runtime import Runtime
from tests.conftest import free_port
from tests.pacs.test_dimse import (
    AE_TITLE,
    BIG_PDU,
    SCU,
    Node,
    dataset_part,
    dcmtk,
    findscu,
    header,
    real_files,
    stored_bytes,
)
from tests.pacs.test_dimse_security import is_a_abort, read_until_closed, wait_for

pytestmark = pytest.mark.dcmtk

ANOTHER_RELEASE = "3.1.0"


def start(runtime: Runtime, **update: object) -> DicomNode:
    settings = runtime.settings.model_copy(
        update={
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "dicom_ae_title": AE_TITLE,
            "dicom_accept_unknown_aes": False,
            "dicom_fast_path": "auto",
            **update,
        }
    )
    node = DicomNode(settings=settings, archive=runtime.archive)
    node.start()
    return node


@pytest.fixture
def another_release(monkeypatch: pytest.MonkeyPatch) -> str:
    """pynetdicom says it is another release (its code stays 3.0.4's)."""
    monkeypatch.setattr(pynetdicom, "__version__", ANOTHER_RELEASE)
    return ANOTHER_RELEASE


@pytest.fixture
def plain_node(
    runtime: Runtime, another_release: str, caplog: pytest.LogCaptureFixture
) -> Iterator[Node]:
    caplog.set_level(logging.INFO)
    move_port = free_port()
    node = start(runtime, remote_aes={SCU: RemoteAE(host="127.0.0.1", port=move_port)})
    try:
        yield Node(node, runtime, node.settings, node.port, move_port)
    finally:
        node.stop()


def test_another_pynetdicom_release_gets_the_plain_path_which_stores_finds_moves_and_gets(
    plain_node: Node, shared_dicom_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = plain_node
    assert not node.node.fast_path
    started = "\n".join(r.getMessage() for r in caplog.get_records("setup"))
    assert f"pynetdicom {ANOTHER_RELEASE} is not {fastpath.WRITTEN_FOR}" in started
    assert "plain path (pynetdicom 3.1.0)" in started
    assert node.node.handlers.prepare_sub_association is None  # the 3.0.4 race fix: not here

    # An association of the plain path: pynetdicom's own DIMSE provider and reactors, the
    # guard's bounded reader.
    ae = AE(ae_title=SCU)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        assert wait_for(lambda: len(node.node.ae.active_associations) == 1)
        (accepted,) = node.node.ae.active_associations
        assert type(accepted) is guard.AcceptorAssociation
        assert type(accepted.dul) is guard.BoundedDUL
        assert type(accepted.dimse) is DIMSEServiceProvider
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()

    # Store (dcmsend), find, move and get back the real files.
    files = real_files(shared_dicom_dir)
    sent = dcmtk("dcmsend", "-aet", SCU, "-aec", AE_TITLE, *node.addr(), "+sd",
                 str(shared_dicom_dir))  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    originals = {str(header(p).SOPInstanceUID): p for p in files}
    assert node.runtime.archive.count()["instances"] == len(files)
    studies = sorted({str(header(p).StudyInstanceUID) for p in files})
    found, _ = findscu(node, tmp_path / "found", "-S", "QueryRetrieveLevel=STUDY",
                       "StudyInstanceUID")  # fmt: skip
    assert sorted(str(s.StudyInstanceUID) for s in found) == studies

    moved_out = tmp_path / "moved"
    moved_out.mkdir()
    every_study = "\\".join(studies)
    moved = dcmtk(
        "movescu", "-S", "-aet", SCU, "-aec", AE_TITLE, "-aem", SCU, *BIG_PDU,
        "--port", str(node.move_port), "+xa", "+B", "-od", str(moved_out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={every_study}",
        *node.addr(), cwd=moved_out,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    got_out = tmp_path / "got"
    got_out.mkdir()
    got = dcmtk(
        "getscu", "-S", "-aet", SCU, "-aec", AE_TITLE, *BIG_PDU, "+B", "-od", str(got_out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={studies[0]}", *node.addr(),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    received = {str(header(p).SOPInstanceUID): p for p in moved_out.iterdir()}
    assert received.keys() == originals.keys()
    for uid, path in received.items():
        assert dataset_part(path.read_bytes()) == dataset_part(stored_bytes(node.runtime, uid))
    in_first_study = {
        uid for uid, path in originals.items() if str(header(path).StudyInstanceUID) == studies[0]
    }
    assert {str(dcmread(p).SOPInstanceUID) for p in got_out.iterdir()} == in_first_study


def test_the_fast_path_with_3_0_4_and_auto_only(
    monkeypatch: pytest.MonkeyPatch, another_release: str
) -> None:
    assert fastpath.unavailable("auto") == (
        f"pynetdicom {another_release} is not 3.0.4, the release it was written against"
    )
    assert not fastpath.race_fix_applies()
    monkeypatch.setattr(pynetdicom, "__version__", "3.0.4")
    assert fastpath.unavailable("auto") is None
    assert fastpath.race_fix_applies()
    assert fastpath.unavailable("off") == "QAMQOR_DICOM_FAST_PATH is off"
    # 3.0.4 by its version, but not 3.0.4's code (a patched copy, say): not the fast path.
    monkeypatch.setitem(fastpath.FINGERPRINTS, "association.Association._run_reactor", "0" * 16)
    assert "association.Association._run_reactor differ" in str(fastpath.unavailable("auto"))
    assert not fastpath.race_fix_applies()


def test_the_installed_pynetdicom_is_the_one_both_were_written_for() -> None:
    """The pin in pyproject and the recorded fingerprints agree with what is installed: a new
    release has to be checked (``fastpath``'s docstring) before it is installed here."""
    assert pynetdicom.__version__ == fastpath.WRITTEN_FOR == guard.WRITTEN_FOR
    assert guard.missing_internals() == []
    assert guard.changed_functions({**guard.FINGERPRINTS, **fastpath.FINGERPRINTS}) == []
    report = subprocess.run(
        [sys.executable, "-m", "qamqor.pacs.dimse.release_check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr
    assert "fast path: used" in report.stdout and "race fix: applied" in report.stdout


def _reads_unbounded(self: DULServiceProvider) -> bool:  # a release that reads PDUs itself
    if self.socket and self.socket.ready:
        self.socket.recv(6)
        return True
    return False


def test_the_node_refuses_to_start_where_pdus_could_not_be_bounded(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, another_release: str
) -> None:
    with monkeypatch.context() as patched:
        patched.setattr(DULServiceProvider, "_is_transport_event", _reads_unbounded)
        with pytest.raises(guard.UnsupportedPynetdicom) as refused:
            start(runtime)
    message = str(refused.value)
    assert "pynetdicom 3.1.0: the DICOM node does not start without its bounded PDU" in message
    assert "no longer reads PDUs with _read_pdu_data" in message
    assert "reads its socket in _is_transport_event too" in message

    with monkeypatch.context() as patched:
        patched.delattr(DULServiceProvider, "_read_pdu_data")
        with pytest.raises(guard.UnsupportedPynetdicom, match=r"_read_pdu_data\(\) is gone"):
            start(runtime)
    start(runtime).stop()  # as it was: the node starts


def test_a_changed_reader_is_reported_and_pdus_are_still_bounded(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """pynetdicom's ``_read_pdu_data`` changed (as in a new release): the node logs an error,
    takes the plain path, and still aborts a PDU that claims a gigabyte."""
    monkeypatch.setitem(guard.FINGERPRINTS, "dul.DULServiceProvider._read_pdu_data", "0" * 16)
    node = start(runtime)
    try:
        assert not node.fast_path
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert any("_read_pdu_data differ from pynetdicom 3.0.4" in r.message for r in errors)
        with socket.create_connection(("127.0.0.1", node.port)) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 1 << 30))
            assert is_a_abort(read_until_closed(sock))
    finally:
        node.stop()
