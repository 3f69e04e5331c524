"""The DICOM node driven by real peers: DCMTK's echoscu, storescu, dcmsend, findscu, movescu and
getscu, against an in-process node on SQLite and PostgreSQL, on both of its paths (the fast path
and pynetdicom's own handlers).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from sqlalchemy import select

from qamqor.core.models import AuditEvent
from qamqor.core.settings import RemoteAE, Settings
from qamqor.pacs.dimse import DicomNode
from qamqor.pacs.parsing import parse_part10
from qamqor.pacs.query import Level, search
from qamqor.runtime import Runtime
from tests.conftest import BOTH_PATHS, free_port

pytestmark = [pytest.mark.dcmtk, BOTH_PATHS]

AE_TITLE = "QAMQOR"
SCU = "TESTSCU"  # a known AE: caller and C-MOVE destination (movescu --port)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
# Retrieving SCUs take 128 KiB PDUs: pynetdicom's cost is per PDU, and megabytes of pixels in
# 16 KiB PDUs (DCMTK's default) would make the suite slow, not the behaviour different.
BIG_PDU = ("-pdu", "131072")

# DCMTK getscu option that makes it prefer each stored syntax (it always adds uncompressed).
PREFER = {
    "1.2.840.10008.1.2.4.91": "+xw",  # JPEG 2000
    "1.2.840.10008.1.2.4.90": "+xv",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.70": "+xs",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.81": "+xu",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.80": "+xt",  # JPEG-LS lossless
    "1.2.840.10008.1.2.5": "+xr",  # RLE
}
# storescu's option proposing a compressed syntax (with the uncompressed ones, in one context).
PROPOSE = {syntax: "-" + flag[1:] for syntax, flag in PREFER.items()}
NAME_PREFIX = "CompressedSamples"  # the real files' patient names start so


@dataclass
class Node:
    node: DicomNode
    runtime: Runtime
    settings: Settings
    port: int
    move_port: int

    def addr(self) -> list[str]:
        return ["127.0.0.1", str(self.port)]


@pytest.fixture(scope="session", autouse=True)
def _dcmtk_installed() -> None:
    missing = [
        tool
        for tool in ("echoscu", "storescu", "dcmsend", "findscu", "movescu", "getscu")
        if shutil.which(tool) is None
    ]
    if missing:
        pytest.fail(f"DCMTK tools missing ({', '.join(missing)}): apt-get install dcmtk")


@pytest.fixture
def node(runtime: Runtime, dicom_fast_path: str) -> Iterator[Node]:
    move_port = free_port()
    settings = runtime.settings.model_copy(
        update={
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "dicom_ae_title": AE_TITLE,
            "remote_aes": {SCU: RemoteAE(host="127.0.0.1", port=move_port)},
            "dicom_accept_unknown_aes": False,
        }
    )
    dicom_node = DicomNode(settings=settings, archive=runtime.archive)
    assert dicom_node.fast_path is (dicom_fast_path == "auto")
    dicom_node.start()
    try:
        yield Node(dicom_node, runtime, settings, dicom_node.port, move_port)
    finally:
        dicom_node.stop()


def dcmtk(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (in ``cwd``: movescu writes there whatever ``-od`` says)."""
    return subprocess.run(
        list(args), env=DCMTK_ENV, capture_output=True, text=True, timeout=120,
        cwd=cwd or tempfile.gettempdir(),
    )  # fmt: skip


def dataset_part(data: bytes) -> bytes:
    """The bytes after the file meta group (its group length tells where it ends)."""
    assert data[128:132] == b"DICM"
    assert data[132:136] == b"\x02\x00\x00\x00", "file meta group length expected first"
    return data[144 + int.from_bytes(data[140:144], "little") :]


def real_files(shared_dicom_dir: Path) -> list[Path]:
    files = sorted(shared_dicom_dir.glob("*.dcm"))
    assert len(files) >= 7
    return files


def header(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True)


def import_files(runtime: Runtime, paths: list[Path]) -> None:
    for path in paths:
        runtime.archive.store_instance(parse_part10(path.read_bytes()), source="test")


def stored_bytes(runtime: Runtime, sop_instance_uid: str) -> bytes:
    return runtime.archive.read_instance_bytes(sop_instance_uid)


def staging_is_empty(runtime: Runtime) -> bool:
    return not list(runtime.archive.storage.staging.iterdir())  # type: ignore[attr-defined]


# Association ---------------------------------------------------------------------------------
def echo_from_anyone(runtime: Runtime, **update: object) -> int:
    """echoscu's exit status against a node with ``update`` to its settings."""
    settings = runtime.settings.model_copy(
        update={"dicom_host": "127.0.0.1", "dicom_port": free_port(), **update}
    )
    other = DicomNode(settings=settings, archive=runtime.archive)
    other.start()
    try:
        return dcmtk("echoscu", "-aet", "ANYONE", "-aec", "QAMQOR", "127.0.0.1", str(other.port)
                     ).returncode  # fmt: skip
    finally:
        other.stop()


def test_echo_and_association_policy(node: Node) -> None:
    assert dcmtk("echoscu", "-aet", SCU, "-aec", AE_TITLE, *node.addr()).returncode == 0

    stranger = dcmtk("echoscu", "-aet", "STRANGER", "-aec", AE_TITLE, *node.addr())
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stderr + stranger.stdout

    wrong_called = dcmtk("echoscu", "-aet", SCU, "-aec", "NOT_QAMQOR", *node.addr())
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stderr + wrong_called.stdout

    # Refusals leave the node serving.
    assert dcmtk("echoscu", "-aet", SCU, "-aec", AE_TITLE, *node.addr()).returncode == 0

    # No known AE and unknown ones refused: nobody gets in (pynetdicom's own check would
    # let everyone in with an empty list).
    assert echo_from_anyone(node.runtime, remote_aes={}, dicom_accept_unknown_aes=False) != 0
    assert echo_from_anyone(node.runtime, remote_aes={}, dicom_accept_unknown_aes=True) == 0


def _contexts_as_values(contexts: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (cx.abstract_syntax, tuple(cx.transfer_syntax), cx.scu_role, cx.scp_role) for cx in contexts
    ]


def test_associations_negotiate_from_contexts_they_never_change(node: Node) -> None:
    """Associations share the node's presentation contexts (a deep copy per association cost
    23 ms of CPU): role selection and rejected proposals leave them as configured."""
    from pynetdicom import AE, build_role
    from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelGet

    from qamqor.pacs.dimse.node import build_ae

    configured = _contexts_as_values(build_ae(node.settings).supported_contexts)
    server = node.node._server
    assert server is not None
    for _ in range(2):
        ae = AE(ae_title=SCU)
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context("1.2.3.4.5.6.7", ExplicitVRLittleEndian)  # unknown: rejected
        assoc = ae.associate(
            "127.0.0.1", node.port, ae_title=AE_TITLE,
            ext_neg=[build_role(CTImageStorage, scp_role=True)],
        )  # fmt: skip
        assert assoc.is_established
        accepted = {cx.abstract_syntax: cx for cx in assoc.accepted_contexts}
        assert accepted[CTImageStorage].as_scp  # the requestor takes the SCP role for C-GET
        assert "1.2.3.4.5.6.7" not in accepted
        assoc.release()
    assert _contexts_as_values(server.contexts) == configured


# Storage and retrieval of the real files -----------------------------------------------------
# DCMTK senders re-encode sequences with explicit lengths, so what arrives over the network is
# not the file's bytes: the node keeps what arrived, and retrieves send back exactly what it
# holds. Files imported from disk are held, and come back, exactly as they were.
def assert_same_instance(stored: bytes, original: Path, *, same_syntax: bool = True) -> None:
    """Same encoding, same attributes, the very same pixel data bytes."""
    copy, source = dcmread(io.BytesIO(stored)), dcmread(original)
    for ds in (copy, source):
        ds.pop(0xFFFCFFFC, None)  # Data Set Trailing Padding: DCMTK drops it when sending
    if same_syntax:
        assert copy.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert copy == source
    assert copy.PixelData == source.PixelData


def test_dcmsend_real_files_stored_as_sent_and_moved_back_byte_for_byte(
    node: Node, shared_dicom_dir: Path, tmp_path: Path
) -> None:
    files = real_files(shared_dicom_dir)
    sent = dcmtk(
        "dcmsend", "-aet", SCU, "-aec", AE_TITLE, *node.addr(), "+sd", str(shared_dicom_dir)
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    counts = node.runtime.archive.count()
    assert counts == {"patients": 5, "studies": 5, "series": 5, "instances": len(files)}
    originals = {str(header(p).SOPInstanceUID): p for p in files}
    for uid, path in originals.items():
        assert_same_instance(stored_bytes(node.runtime, uid), path)

    # C-MOVE of every study to movescu's own storage SCP, which accepts every syntax and
    # writes what it receives bit for bit (+B).
    out = tmp_path / "moved"
    out.mkdir()
    studies = "\\".join(sorted({str(header(p).StudyInstanceUID) for p in files}))
    moved = dcmtk(
        "movescu", "-S", "-aet", SCU, "-aec", AE_TITLE, "-aem", SCU, *BIG_PDU,
        "--port", str(node.move_port), "+xa", "+B", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={studies}",
        *node.addr(), cwd=out,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    received = {str(header(p).SOPInstanceUID): p for p in out.iterdir()}
    assert received.keys() == originals.keys(), moved.stdout + moved.stderr
    for uid, path in received.items():
        stored = stored_bytes(node.runtime, uid)
        assert dataset_part(path.read_bytes()) == dataset_part(stored)
        assert_same_instance(path.read_bytes(), originals[uid])


DEFLATE_ONLY_PROFILE = """\
[[TransferSyntaxes]]
[Deflated]
TransferSyntax1 = DeflatedLittleEndianExplicit
[[PresentationContexts]]
[CTDeflated]
PresentationContext1 = CTImageStorage\\Deflated
[[Profiles]]
[DeflateOnly]
PresentationContexts = CTDeflated
"""


def test_storescu_offering_compressed_and_uncompressed_gets_compressed_kept(
    node: Node, shared_dicom_dir: Path, tmp_path: Path
) -> None:
    files = real_files(shared_dicom_dir)
    by_syntax: dict[str, list[Path]] = {}
    for path in files:
        by_syntax.setdefault(str(header(path).file_meta.TransferSyntaxUID), []).append(path)
    # storescu offers a compressed syntax *and* the uncompressed ones in one context; it cannot
    # decode JPEG 2000 itself, so the node must take the compressed one.
    for syntax, paths in by_syntax.items():
        sent = dcmtk("storescu", "-aet", SCU, "-aec", AE_TITLE, PROPOSE[syntax], *node.addr(),
                     *map(str, paths))  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    for path in files:
        assert_same_instance(stored_bytes(node.runtime, str(header(path).SOPInstanceUID)), path)

    # A sender offering deflate alone: stored deflated, as received.
    config = tmp_path / "storescu.cfg"
    config.write_text(DEFLATE_ONLY_PROFILE)
    path = get_testdata_file("CT_small.dcm")
    sent = dcmtk("storescu", "-aet", SCU, "-aec", AE_TITLE, "-xf", str(config), "DeflateOnly",
                 *node.addr(), path)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    stored = stored_bytes(node.runtime, str(header(Path(path)).SOPInstanceUID))
    assert dcmread(io.BytesIO(stored)).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert_same_instance(stored, Path(path), same_syntax=False)


def test_imported_real_files_got_back_byte_for_byte_or_decoded_with_getscu(
    node: Node, shared_dicom_dir: Path, tmp_path: Path
) -> None:
    files = real_files(shared_dicom_dir)
    import_files(node.runtime, files)
    by_syntax: dict[str, list[Path]] = {}
    for path in files:
        by_syntax.setdefault(str(header(path).file_meta.TransferSyntaxUID), []).append(path)
    for syntax, paths in by_syntax.items():
        out = tmp_path / syntax
        out.mkdir()
        uids = "\\".join(str(header(p).SOPInstanceUID) for p in paths)
        got = dcmtk(
            "getscu", "-S", "-aet", SCU, "-aec", AE_TITLE, *BIG_PDU, PREFER[syntax], "+B",
            "-od", str(out),
            "-k", "QueryRetrieveLevel=IMAGE", "-k", f"SOPInstanceUID={uids}", *node.addr(),
        )  # fmt: skip
        assert got.returncode == 0, got.stderr
        received = {str(header(p).SOPInstanceUID): p for p in out.iterdir()}
        assert len(received) == len(paths)
        for original in paths:
            copy = received[str(header(original).SOPInstanceUID)]
            assert str(header(copy).file_meta.TransferSyntaxUID) == syntax
            assert dataset_part(copy.read_bytes()) == dataset_part(original.read_bytes())

    # getscu's default asks for uncompressed only: the node decodes. The smaller studies
    # cover JPEG 2000, JPEG lossless, JPEG-LS near-lossless and RLE.
    studies_of = {"CT1_JPLL.dcm", "RG1_JLSN.dcm", "RG3_RLE.dcm"}
    wanted = {str(header(shared_dicom_dir / n).StudyInstanceUID) for n in studies_of}
    paths = [p for p in files if str(header(p).StudyInstanceUID) in wanted]
    out = tmp_path / "got"
    out.mkdir()
    studies = "\\".join(sorted(wanted))
    got = dcmtk(
        "getscu", "-S", "-aet", SCU, "-aec", AE_TITLE, *BIG_PDU, "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={studies}", *node.addr(),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    received = {str(header(p).SOPInstanceUID): p for p in out.iterdir()}
    for original_path in paths:
        original = dcmread(original_path)
        copy = dcmread(received[str(original.SOPInstanceUID)])
        assert copy.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert copy.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(copy.pixel_array, original.pixel_array)
    assert len(received) == len(paths)


# Query ---------------------------------------------------------------------------------------
def findscu(node: Node, out: Path, model: str, *keys: str) -> tuple[list[Dataset], str]:
    out.mkdir()
    args = ["findscu", "-d", model, "-aet", SCU, "-aec", AE_TITLE, "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    result = dcmtk(*args, *node.addr())
    responses = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return responses, result.stdout + result.stderr


def test_findscu_at_every_level_with_wildcards_and_date_ranges(
    node: Node, shared_dicom_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    files = real_files(shared_dicom_dir)
    import_files(node.runtime, files)
    ct1 = header(shared_dicom_dir / "CT1_JPLL.dcm")
    rg1 = header(shared_dicom_dir / "RG1_JLSN.dcm")

    patients, _ = findscu(
        node, tmp_path / "p", "-P", "QueryRetrieveLevel=PATIENT",
        f"PatientName={NAME_PREFIX}^RG*", "PatientID", "NumberOfPatientRelatedStudies",
    )  # fmt: skip
    assert sorted(p.PatientID for p in patients) == ["10RG2", "11RG3", "9RG1"]
    assert all(p.NumberOfPatientRelatedStudies == 1 for p in patients)
    assert {e.keyword for e in patients[0]} <= {
        "QueryRetrieveLevel", "SpecificCharacterSet", "PatientName", "PatientID",
        "NumberOfPatientRelatedStudies",
    }  # fmt: skip

    by_id, _ = findscu(node, tmp_path / "p2", "-P", "QueryRetrieveLevel=PATIENT", "PatientID=1?RG?")
    assert sorted(p.PatientID for p in by_id) == ["10RG2", "11RG3"]

    studies, _ = findscu(
        node, tmp_path / "s", "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20040101-20041231",
        "StudyInstanceUID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "PatientName",
    )  # fmt: skip
    assert len(studies) == 4  # RG3 is from 2003
    ct_study = next(s for s in studies if s.StudyInstanceUID == ct1.StudyInstanceUID)
    assert ct_study.ModalitiesInStudy == "CT"
    assert ct_study.NumberOfStudyRelatedInstances == 2
    assert ct_study.StudyDate == "20040826" and "AccessionNumber" not in ct_study

    open_range, _ = findscu(
        node, tmp_path / "s2", "-S", "QueryRetrieveLevel=STUDY", "StudyDate=-20031231",
        "StudyInstanceUID",
    )  # fmt: skip
    assert len(open_range) == 1

    series, _ = findscu(
        node, tmp_path / "se", "-S", "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={rg1.StudyInstanceUID}", "SeriesInstanceUID", "Modality",
        "NumberOfSeriesRelatedInstances",
    )  # fmt: skip
    assert [(s.SeriesInstanceUID, s.Modality) for s in series] == [(rg1.SeriesInstanceUID, "CR")]
    assert series[0].NumberOfSeriesRelatedInstances == 2

    images, _ = findscu(
        node, tmp_path / "i", "-S", "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={ct1.StudyInstanceUID}", f"SeriesInstanceUID={ct1.SeriesInstanceUID}",
        "SOPInstanceUID", "InstanceNumber", "SOPClassUID",
    )  # fmt: skip
    assert sorted(int(i.InstanceNumber) for i in images) == [3, 4]
    assert all(i.SOPClassUID == ct1.SOPClassUID for i in images)

    # Each query is in the audit trail, under the caller's AE title, without patient data.
    with node.runtime.session_factory() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "dicom-find")).all()
    assert len(events) == 6
    assert {e.actor for e in events} == {f"dicom:{SCU}"}
    assert any(
        e.object_id == f"IMAGE {ct1.StudyInstanceUID} {ct1.SeriesInstanceUID}" for e in events
    )
    assert not any(NAME_PREFIX in e.object_id + e.detail for e in events)
    assert NAME_PREFIX not in caplog.text and "9RG1" not in caplog.text

    # Refused queries: a failure status with the reason, and the node goes on.
    responses, output = findscu(
        node, tmp_path / "a", "-S", "QueryRetrieveLevel=PATIENT", "PatientID"
    )  # Study Root has no PATIENT level
    assert responses == []
    assert "0xa900" in output.lower() and "no PATIENT level" in output

    responses, output = findscu(
        node, tmp_path / "b", "-S", "QueryRetrieveLevel=STUDY", "StudyDate=yesterday"
    )
    assert responses == []
    assert "0xa900" in output.lower() and "dates are YYYYMMDD" in output
    assert dcmtk("echoscu", "-aet", SCU, "-aec", AE_TITLE, *node.addr()).returncode == 0


def _tiny_instance(study: str, series: str, number: int, patient_id: str = "P1") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = patient_id
    ds.PatientName = "Tiny^Patient"
    ds.StudyDate = "20240102"
    ds.Modality = "OT"
    ds.InstanceNumber = number
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_findscu_cancel_stops_the_responses(node: Node, tmp_path: Path) -> None:
    # Enough matches that sending them all takes far longer than findscu's round trip to
    # cancel after the first (50 were sent in full before the C-CANCEL came on a fast machine).
    studies = 400
    for start in range(0, studies, 200):
        batch = [
            parse_part10(_part10(_tiny_instance(generate_uid(), generate_uid(), n)))
            for n in range(start, start + 200)
        ]
        results = node.runtime.archive.store_instances(batch, source="test")
        assert not [r for r in results if isinstance(r, Exception)]
    out = tmp_path / "c"
    out.mkdir()
    result = dcmtk(
        "findscu", "-d", "-S", "-aet", SCU, "-aec", AE_TITLE, "--cancel", "1", "-X",
        "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
        *node.addr(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "0xfe00" in (result.stdout + result.stderr).lower()  # final status: Cancel
    assert 1 <= len(list(out.glob("rsp*.dcm"))) < studies


# Bad input -----------------------------------------------------------------------------------
def _status_detail(output: str) -> tuple[str, str]:
    """(DIMSE status, error comment) of the C-STORE response storescu -d printed."""
    status = re.search(r"DIMSE Status\s*:\s*(0x[0-9a-fA-F]{4})", output)
    comments = [line for line in output.splitlines() if "ErrorComment" in line]
    return (status.group(1).lower() if status else ""), (comments[0] if comments else "")


def test_bad_files_rejected_with_reason_and_node_keeps_serving(
    node: Node,
    tmp_path: Path,
    shared_dicom_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO)
    short = dcmread(get_testdata_file("CT_small.dcm"))
    short.Rows = short.Rows * 2  # the header now promises twice the pixels there are
    short.save_as(tmp_path / "short.dcm")
    no_study = dcmread(get_testdata_file("CT_small.dcm"))
    del no_study.StudyInstanceUID
    no_study.save_as(tmp_path / "no_study.dcm")
    j2k = dcmread(shared_dicom_dir / "CT1_J2KI.dcm")
    j2k.Rows = 256  # the codestream is 512 x 512
    j2k.save_as(tmp_path / "j2k_rows.dcm")

    cases = [
        ("short.dcm", [], "0xc000", "Pixel Data has 32768 bytes"),
        ("no_study.dcm", [], "0xa900", "StudyInstanceUID is missing"),
        ("j2k_rows.dcm", ["-xw"], "0xc000", "the encoded image is 512x512"),
    ]
    for name, options, expected_status, reason in cases:
        result = dcmtk("storescu", "-d", "-aet", SCU, "-aec", AE_TITLE, *options, *node.addr(),
                       str(tmp_path / name))  # fmt: skip
        status, comment = _status_detail(result.stdout + result.stderr)
        assert status == expected_status, (name, status)
        assert reason in comment, (name, comment)

    assert node.runtime.archive.count()["instances"] == 0
    assert staging_is_empty(node.runtime)
    assert "Rows" in caplog.text and NAME_PREFIX not in caplog.text

    # The node goes on serving: an echo and a good store on new associations.
    assert dcmtk("echoscu", "-aet", SCU, "-aec", AE_TITLE, *node.addr()).returncode == 0
    good = get_testdata_file("CT_small.dcm")
    assert dcmtk("storescu", "-aet", SCU, "-aec", AE_TITLE, *node.addr(), good).returncode == 0
    assert node.runtime.archive.count()["instances"] == 1

    # DCMTK will not send what it cannot parse; pynetdicom sends the raw bytes of a file.
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    good = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    body = dataset_part(good)
    meta = good[: len(good) - len(body)]
    (tmp_path / "truncated.dcm").write_bytes(meta + body[: len(body) // 2])
    (tmp_path / "garbage.dcm").write_bytes(meta + b"\x00this is not a DICOM data set\x00" * 50)

    ae = AE(ae_title=SCU)
    ae.add_requested_context(header(tmp_path / "truncated.dcm").file_meta.MediaStorageSOPClassUID,
                             ExplicitVRLittleEndian)  # fmt: skip
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        # The node's end of the connection does not wait on Nagle's algorithm.
        (accepted,) = node.node.ae.active_associations
        sock = accepted.dul.socket.socket
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        for name, reason in [("truncated.dcm", "truncated"), ("garbage.dcm", "unknown VR")]:
            status = assoc.send_c_store(tmp_path / name)
            assert status.Status in (0xA900, 0xC000), name
            assert reason in status.ErrorComment
        # The same association still stores a good instance.
        other = dcmread(get_testdata_file("CT_small.dcm"))
        other.SOPInstanceUID = generate_uid()
        assert assoc.send_c_store(other).Status == 0
    finally:
        assoc.release()
    assert node.runtime.archive.count()["instances"] == 2
    assert staging_is_empty(node.runtime)


# Concurrency ---------------------------------------------------------------------------------
def test_parallel_associations_store_into_the_same_studies(node: Node, tmp_path: Path) -> None:
    senders, per_sender = 4, 8
    studies = [generate_uid() for _ in range(2)]
    series = {s: [generate_uid(), generate_uid()] for s in studies}
    template = dcmread(get_testdata_file("CT_small.dcm"))
    folders = []
    for sender in range(senders):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        folders.append(folder)
        for n in range(per_sender):
            study = studies[n % 2]
            ds = template.copy()
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series[study][(n // 2) % 2]
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = sender * per_sender + n
            ds.save_as(folder / f"{n}.dcm")
    processes = [
        subprocess.Popen(
            ["storescu", "-aet", SCU, "-aec", AE_TITLE, *node.addr(), "+sd", str(folder)],
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for folder in folders
    ]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stdout.read() if process.stdout else ""

    total = senders * per_sender
    assert node.runtime.archive.count() == {
        "patients": 1, "studies": 2, "series": 4, "instances": total,
    }  # fmt: skip
    with node.runtime.session_factory() as session:
        found = search(session, level=Level.STUDY, criteria={})
        assert sorted(s.NumberOfStudyRelatedInstances for s in found) == [total // 2] * 2
        assert all(s.NumberOfStudyRelatedSeries == 2 for s in found)
        in_series = search(session, level=Level.SERIES, criteria={})
        assert sorted(s.NumberOfSeriesRelatedInstances for s in in_series) == [total // 4] * 4
    assert staging_is_empty(node.runtime)


# Retrieve edge cases and audit ---------------------------------------------------------------
def test_move_to_unknown_destination_refused_and_retrieves_audited(
    node: Node, shared_dicom_dir: Path, tmp_path: Path
) -> None:
    path = shared_dicom_dir / "CT1_J2KI.dcm"
    import_files(node.runtime, [path])
    ds = header(path)
    refused = dcmtk(
        "movescu", "-d", "-S", "-aet", SCU, "-aec", AE_TITLE, "-aem", "NOBODY",
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
        *node.addr(),
    )  # fmt: skip
    assert "0xa801" in (refused.stdout + refused.stderr).lower()

    out = tmp_path / "series"
    out.mkdir()
    got = dcmtk(
        "getscu", "-S", "-aet", SCU, "-aec", AE_TITLE, "-od", str(out),
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}", *node.addr(),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert len(list(out.iterdir())) == 1

    moved_out = tmp_path / "moved"
    moved_out.mkdir()
    moved = dcmtk(
        "movescu", "-S", "-aet", SCU, "-aec", AE_TITLE, "-aem", SCU, "--port",
        str(node.move_port), "-od", str(moved_out), "-k", "QueryRetrieveLevel=IMAGE",
        "-k", f"StudyInstanceUID={ds.StudyInstanceUID}",
        "-k", f"SeriesInstanceUID={ds.SeriesInstanceUID}",
        "-k", f"SOPInstanceUID={ds.SOPInstanceUID}", *node.addr(), cwd=moved_out,
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    # movescu proposed only uncompressed: the JPEG 2000 instance went out decoded.
    (copy,) = [dcmread(p) for p in moved_out.iterdir()]
    assert copy.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert copy.SOPInstanceUID == ds.SOPInstanceUID

    with node.runtime.session_factory() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    retrieves = [(e.action, e.object_id) for e in events if e.object_type == "dicom-retrieve"]
    assert all(
        e.detail.endswith(f"studies: {ds.StudyInstanceUID}")
        for e in events
        if e.object_type == "dicom-retrieve"
    )
    assert retrieves == [
        ("dicom-get", f"SERIES {ds.StudyInstanceUID} {ds.SeriesInstanceUID}"),
        (
            "dicom-move",
            f"IMAGE {ds.StudyInstanceUID} {ds.SeriesInstanceUID} {ds.SOPInstanceUID}"[:128],
        ),
    ]
    assert all(e.actor == f"dicom:{SCU}" for e in events)


# The acceptor's own C-STORE path ------------------------------------------------------------
# On the fast path the node serves C-STORE requests from the fragments pynetdicom has split out
# of the PDUs (qamqor.pacs.dimse.fastpath); on the plain path pynetdicom does. A peer may cut a
# message anywhere and pack fragments into PDUs as it likes (PS3.8 E.2); these send one message
# cut into small fragments, packed three ways.
def _store_fragments(sop_instance_uid: str, data: bytes, message_id: int) -> list[list[Any]]:
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE

    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = SecondaryCaptureImageStorage
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.Priority = 2
    request.DataSet = io.BytesIO(data)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    # 64-byte PDUs: the command set (about 130 bytes) and the data set come in several pieces.
    return [list(v) for p in message.encode_msg(1, 64) for v in p.presentation_data_value_list]


def _secondary_capture() -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))  # explicit VR little endian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _data_set_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return dataset_part(buffer.getvalue())


def _send_packed(assoc: Any, fragments: list[list[Any]], per_pdu: int) -> None:
    from pynetdicom.pdu_primitives import P_DATA

    for start in range(0, len(fragments), per_pdu):
        pdata = P_DATA()
        pdata.presentation_data_value_list.extend(fragments[start : start + per_pdu])
        assoc.dul.send_pdu(pdata)


def _scu_association(node: Node) -> Any:
    from pynetdicom import AE

    from qamqor.pacs.dimse.fastpath import leave_responses_to_sender

    ae = AE(ae_title=SCU)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)  # context 1
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    leave_responses_to_sender(assoc)
    return assoc


def test_store_requests_cut_and_packed_any_way_are_stored(node: Node) -> None:
    assoc = _scu_association(node)
    sent = []
    try:
        # One fragment per PDU; several per PDU, so that one holds the end of the command
        # set and the start of the data set; the whole message in one PDU.
        for message_id, per_pdu in [(1, 1), (2, 3), (3, 1000)]:
            ds = _secondary_capture()
            data = _data_set_bytes(ds)
            fragments = _store_fragments(ds.SOPInstanceUID, data, message_id)
            commands = [f for f in fragments if f[1][0] & 1]
            assert len(commands) > 1 and len(fragments) > 100
            _send_packed(assoc, fragments, per_pdu)
            _, response = assoc.dimse.get_msg(block=True)
            assert response.MessageIDBeingRespondedTo == message_id
            assert response.Status == 0x0000, per_pdu
            assert response.AffectedSOPInstanceUID == ds.SOPInstanceUID
            sent.append((ds.SOPInstanceUID, data))
        # A refused instance is answered with its reason, and the association goes on.
        ds = _secondary_capture()
        del ds.StudyInstanceUID
        _send_packed(assoc, _store_fragments(ds.SOPInstanceUID, _data_set_bytes(ds), 4), 5)
        _, response = assoc.dimse.get_msg(block=True)
        assert (response.MessageIDBeingRespondedTo, response.Status) == (4, 0xA900)
        assert "StudyInstanceUID is missing" in response.ErrorComment
        assert assoc.send_c_echo().Status == 0  # another service on the same association
    finally:
        assoc.release()
    assert node.runtime.archive.count()["instances"] == 3
    for uid, data in sent:
        assert dataset_part(stored_bytes(node.runtime, uid)) == data


def _wait_for_abort(assoc: Any) -> None:
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted


def test_command_inside_a_data_set_aborts_only_that_association(node: Node) -> None:
    """The fast path aborts the association. pynetdicom's own DIMSE provider (the plain path)
    takes the second command set into the first and waits for the rest of the data set, until
    the peer gives up (or the network timeout): nothing is stored either way, and the
    association's place is freed once it ends."""
    assoc = _scu_association(node)
    ds = _secondary_capture()
    fragments = _store_fragments(ds.SOPInstanceUID, _data_set_bytes(ds), 1)
    data_fragments = [f for f in fragments if not f[1][0] & 1]
    commands = [f for f in fragments if f[1][0] & 1]
    try:
        # Half the data set, then a new command: not a DIMSE message any more.
        _send_packed(assoc, commands + data_fragments[:10] + commands, 1)
        if node.node.fast_path:
            _wait_for_abort(assoc)
        else:
            time.sleep(0.5)
            assert assoc.is_established
    finally:
        if assoc.is_established:
            assoc.abort()
    assert node.runtime.archive.count()["instances"] == 0
    assert staging_is_empty(node.runtime)
    deadline = time.monotonic() + 10
    while node.node.limits.load.total() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.node.limits.load.total() == 0
    # The node keeps serving.
    assert dcmtk("echoscu", "-aet", SCU, "-aec", AE_TITLE, *node.addr()).returncode == 0


def test_a_malformed_p_data_pdu_aborts_only_that_association(node: Node) -> None:
    """A P-DATA-TF whose item length runs past the PDU: the node aborts the association (as
    pynetdicom's decoding says, Evt19), stores nothing and keeps serving."""
    assoc = _scu_association(node)
    try:
        sock = assoc.dul.socket.socket
        item = struct.pack(">LBB", 500, 1, 0x03) + b"\x00" * 10  # says 500 bytes, has 12
        sock.sendall(struct.pack(">BBL", 0x04, 0x00, len(item)) + item)
        _wait_for_abort(assoc)
    finally:
        if assoc.is_established:
            assoc.abort()
    assert node.runtime.archive.count()["instances"] == 0
    assert dcmtk("echoscu", "-aet", SCU, "-aec", AE_TITLE, *node.addr()).returncode == 0


def test_a_large_instance_in_pdus_of_every_size_is_stored_whole(node: Node, tmp_path: Path) -> None:
    """A 2 MB image sent in 4 KiB PDUs and in the node's largest: every byte arrives."""
    ds = _secondary_capture()
    ds.Rows = ds.Columns = 1024
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelData = np.random.default_rng(7).integers(0, 4096, (1024, 1024), np.uint16).tobytes()
    for pdu_size in ("4096", "131072"):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"{pdu_size}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sent = dcmtk(
            "storescu", "-aet", SCU, "-aec", AE_TITLE, "--max-send-pdu", pdu_size,
            *node.addr(), str(path),
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        stored = dcmread(io.BytesIO(stored_bytes(node.runtime, ds.SOPInstanceUID)))
        assert stored.PixelData == ds.PixelData
