"""A few hundred mutations of the real files, each sent by C-STORE and by STOW-RS.

For every mutation the archive either stores the instance or refuses it with a reason: a
C-STORE failure status of the "cannot understand" or "does not match the SOP class" kind
with an Error Comment, a STOW-RS Failed SOP Sequence item with its Failure Reason and a
readable reason; the node goes on answering C-ECHO throughout. Every instance it stored
comes back through WADO-RS and reads fully with pydicom (every element converted, the pixels
decoded, written again), its metadata is valid JSON and its rendered image is an image.
Reasons never quote patient data.

The mutations come from ``random.Random(FUZZ_SEED)`` (``dicom_fuzz.Mutator``): the same on
every run. ``QAMQOR_FUZZ_MUTATIONS`` sets how many (``FUZZ_MUTATIONS`` by default).
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from qamqor.core.settings import Settings
from qamqor.pacs.dimse import DicomNode
from qamqor.pacs.models import Instance, Series, Study
from qamqor.runtime import Runtime
from tests.conftest import LiveServer, free_port
from tests.pacs.dicom_fuzz import Mutant, Mutator, Seed, native_seeds, read_fully, seed_of

FUZZ_SEED = 20261202
FUZZ_MUTATIONS = int(os.environ.get("QAMQOR_FUZZ_MUTATIONS", "300"))
CREDENTIALS = ("admin", "admin-password")
BOUNDARY = "fuzz-boundary-5b1e"
#: How a refusal may be answered: cannot understand (C000-CFFF), does not match (A900-A9FF).
REFUSALS = range(0xA900, 0xAA00), range(0xC000, 0xD000)
#: The real files' patients (their names start so) and IDs: never in a reason.
PATIENT_WORDS = ("CompressedSamples",)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "dicom_accept_unknown_aes": True,
        }
    )


@pytest.fixture
def node(runtime: Runtime) -> Iterator[DicomNode]:
    dicom_node = DicomNode(settings=runtime.settings, archive=runtime.archive)
    dicom_node.start()
    try:
        yield dicom_node
    finally:
        dicom_node.stop()


@pytest.fixture(scope="module")
def seeds(shared_dicom_dir: Path) -> list[Seed]:
    real = [seed_of(p.name, p.read_bytes()) for p in sorted(shared_dicom_dir.glob("*.dcm"))]
    # The CT uncompressed (Explicit and Implicit VR) and RLE encoded: native syntaxes and
    # RLE at a size that keeps the test fast.
    return real + native_seeds("CT1", (shared_dicom_dir / "CT1_J2KI.dcm").read_bytes())


def _weights(seeds: list[Seed]) -> list[float]:
    """Most mutations of the small files; the large ones (decoded in seconds) a few each."""
    return [8.0 if len(seed.data) < 700_000 else 1.0 for seed in seeds]


def _unique(data: bytes, seed: Seed, number: int) -> tuple[bytes, str]:
    """``data`` with its SOP Instance UID made unique (as long as the seed's: offsets stay),
    and that UID (where a mutation spared it, a stored instance has it)."""
    uid = dcmread(io.BytesIO(seed.data), stop_before_pixels=True).SOPInstanceUID.encode()
    suffix = f"9{number:06d}".encode()
    prefix = uid[: len(uid) - len(suffix) - 1]
    if prefix.endswith(b"."):
        prefix = prefix[:-1] + b"1"
    new = prefix + b"." + suffix
    assert len(new) == len(uid)
    return data.replace(uid, new), new.decode()


@dataclass
class Sent:
    mutant: Mutant
    channel: str
    """``c-store`` or ``stow-rs``."""
    stored: bool
    status: int
    reason: str
    uid: str = ""
    """The SOP Instance UID the archive says it stored."""


def _c_store(assoc, path: Path) -> tuple[bool, int, str]:  # type: ignore[no-untyped-def]
    status = assoc.send_c_store(path)
    assert "Status" in status, "no C-STORE response"
    code = int(status.Status)
    return code == 0, code, str(status.get("ErrorComment", ""))


def _stow(session: requests.Session, url: str, data: bytes) -> tuple[bool, int, str, str]:
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    answer = session.post(url, data=body, headers={"Content-Type": content_type}, timeout=60)
    assert answer.status_code in (200, 409), answer.text
    result = answer.json()
    if answer.status_code == 200:
        (item,) = result["00081199"]["Value"]
        return True, 0, "", item["00081155"]["Value"][0]
    (failed,) = result["00081198"]["Value"]
    reason = str(failed["00000902"].get("Value", [""])[0])
    return False, int(failed["00081197"]["Value"][0]), reason, ""


def _association(node: DicomNode, seeds: list[Seed]):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in sorted({(s.sop_class_uid, s.transfer_syntax_uid) for s in seeds}):
        ae.add_requested_context(sop_class, syntax)  # one context each: each is accepted
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="QAMQOR")
    assert assoc.is_established
    return assoc


def test_mutated_files_are_stored_whole_or_refused_with_a_reason(
    runtime: Runtime,
    live_server: LiveServer,
    admin_credentials: tuple[str, str],
    node: DicomNode,
    seeds: list[Seed],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as they are
    session = requests.Session()
    session.auth = CREDENTIALS
    stow_url = f"{live_server.url}/dicom-web/studies"
    started = time.perf_counter()
    sent: list[Sent] = []
    assoc = _association(node, seeds)
    try:
        mutants = Mutator(FUZZ_SEED).mutants(seeds, FUZZ_MUTATIONS, _weights(seeds))
        for number, mutant in enumerate(mutants):
            data, uid = _unique(mutant.data, mutant.seed, 2 * number)
            path = tmp_path / "mutant.dcm"
            path.write_bytes(data)
            if not assoc.is_established:  # the node aborted it: a new one (counted below)
                sent.append(Sent(mutant, "c-store", False, -1, "association aborted"))
                assoc = _association(node, seeds)
            stored, status, reason = _c_store(assoc, path)  # the request has ``uid``
            sent.append(Sent(mutant, "c-store", stored, status, reason, uid if stored else ""))
            whole, _ = _unique(mutant.data, mutant.seed, 2 * number + 1)
            sent.append(Sent(mutant, "stow-rs", *_stow(session, stow_url, whole)))
            if number % 10 == 9:
                assert assoc.send_c_echo().Status == 0, "the node stopped answering C-ECHO"
    finally:
        if assoc.is_established:
            assoc.release()
    sending = time.perf_counter() - started

    aborted = [s for s in sent if s.status == -1]
    assert not aborted, [s.mutant.kind for s in aborted]
    refused = [s for s in sent if not s.stored]
    for item in refused:
        where = (item.channel, item.mutant.kind, hex(item.status), item.reason)
        assert any(item.status in kind for kind in REFUSALS), where
        assert len(item.reason) > 10, (item.channel, item.mutant.kind, item.reason)
        assert not any(word in item.reason for word in PATIENT_WORDS), item.reason
    # The node answers a new association too.
    fresh = _association(node, seeds)
    assert fresh.send_c_echo().Status == 0
    fresh.release()

    with runtime.session_factory() as db:
        stored = db.execute(
            select(Study.study_instance_uid, Series.series_instance_uid, Instance.sop_instance_uid)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
        ).all()
    assert {uid for _, _, uid in stored} == {s.uid for s in sent if s.stored}
    checking = time.perf_counter()
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    for study, series, instance in stored:
        url = f"{live_server.url}/dicom-web/studies/{study}/series/{series}/instances/{instance}"
        answer = session.get(url, headers=accept, timeout=60)
        assert answer.status_code == 200, (instance, answer.status_code)
        part = _single_part(answer)
        ds = read_fully(part)
        assert ds.SOPInstanceUID == instance
        metadata = session.get(url + "/metadata", timeout=60)
        assert metadata.status_code == 200 and metadata.json(), instance
        rendered = session.get(url + "/rendered", headers={"Accept": "image/png"}, timeout=60)
        if "PixelData" in ds:
            assert rendered.status_code == 200, (instance, rendered.text)
            image = Image.open(io.BytesIO(rendered.content))
            assert image.size[0] > 0 and image.size[1] > 0
        else:  # a header alone: no image, and a reason
            assert 400 <= rendered.status_code < 500 and rendered.json()["detail"]
    kinds = Counter((s.mutant.kind, "stored" if s.stored else "refused") for s in sent)
    print(
        f"\n{len(sent)} sent ({len(sent) // 2} mutations x 2) in {sending:.1f} s, "
        f"{len(stored)} stored and read back in {time.perf_counter() - checking:.1f} s"
    )
    for (kind, outcome), count in sorted(kinds.items()):
        print(f"  {kind:16s} {outcome:8s} {count}")
    assert sum(s.stored for s in sent) >= 10  # the mutations leave enough to read back
    assert len(refused) >= len(sent) // 2


def _single_part(answer: requests.Response) -> bytes:
    media_type, _, params = answer.headers["Content-Type"].partition(";")
    assert media_type.strip() == "multipart/related"
    boundary = next(
        p.split("=", 1)[1].strip().strip('"')
        for p in params.split(";")
        if p.strip().startswith("boundary=")
    ).encode()
    (chunk,) = [c for c in answer.content.split(b"--" + boundary)[1:] if not c.startswith(b"--")]
    _, _, body = chunk.partition(b"\r\n\r\n")
    return body.removesuffix(b"\r\n")
