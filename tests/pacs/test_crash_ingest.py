"""kill -9 of ``qamqor serve`` while six associations store at once, then a restart.

Every instance whose C-STORE the node acknowledged (status 0x0000) before the kill must be in
the archive afterwards, byte for byte as it was sent; every index row must have its file and
every file its row; nothing stays in staging. The server is a real ``qamqor serve`` process
(several acceptor processes on this machine's cores), on SQLite and on PostgreSQL; the senders
are pynetdicom associations in threads of the test, which record what was acknowledged.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select

from qamqor.core.db import make_engine
from qamqor.pacs.models import Instance
from tests.conftest import BOTH_PATHS
from tests.pacs.test_crash_recovery import PATIENT_NAME, Server, check_consistent

pytestmark = [pytest.mark.dcmtk, BOTH_PATHS]

SENDERS = 6
ROUNDS = 3
STUDIES = 3


def make_instances(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` CT instances of 32 KiB of noise in a few studies, written as Part 10 files."""
    rng = np.random.default_rng(seed)
    studies = [(generate_uid(), generate_uid()) for _ in range(STUDIES)]
    paths = []
    for number in range(count):
        study_uid, series_uid = studies[number % STUDIES]
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientName = PATIENT_NAME
        ds.PatientID = f"CRASH-{number % STUDIES}"
        ds.Modality = "CT"
        ds.StudyDate = "20240301"
        ds.InstanceNumber = number + 1
        ds.Rows = ds.Columns = 128
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 4096, size=(128, 128), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{seed}-{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send_until_refused(port: int, paths: list[Path], acknowledged: dict[str, Path]) -> None:
    """Store ``paths`` over one association (a new one after each failure) until the server is
    gone; record each instance the node answered with Success."""
    ae = AE(ae_title="CRASHER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    queue = list(paths)
    failures = 0
    while queue and failures < 3:
        assoc = ae.associate("127.0.0.1", port, ae_title="QAMQOR")
        if not assoc.is_established:
            failures += 1
            time.sleep(0.2)
            continue
        try:
            while queue and assoc.is_established:
                path = queue[0]
                status = assoc.send_c_store(path)
                if status and getattr(status, "Status", None) == 0x0000:
                    acknowledged[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
                    queue.pop(0)
                elif not status:  # no answer: the association died under it
                    break
                else:
                    pytest.fail(f"the node refused a valid instance: 0x{status.Status:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
        failures += 1


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's data set, after its preamble and file meta information."""
    data = path.read_bytes()
    meta = dcmread(path, stop_before_pixels=True).file_meta
    end = 132 + 12 + int(meta.FileMetaInformationGroupLength)
    return data[end:]


def test_kill_9_during_multi_association_ingest_keeps_every_acknowledged_instance(
    tmp_path: Path, database_url: str
) -> None:
    server = Server(tmp_path / "data", database_url, tmp_path / "serve.log")
    source = tmp_path / "source"
    source.mkdir()
    acknowledged: dict[str, Path] = {}
    chooser = random.Random(5)
    try:
        for round_number in range(ROUNDS):
            server.start()
            recorded: list[dict[str, Path]] = [{} for _ in range(SENDERS)]
            # New instances each round, more than can be sent before the kill.
            paths = make_instances(source, SENDERS * 100, seed=round_number)
            shares = [paths[i::SENDERS] for i in range(SENDERS)]
            threads = [
                threading.Thread(
                    target=send_until_refused,
                    args=(server.dicom_port, share, record),
                    daemon=True,
                )
                for share, record in zip(shares, recorded, strict=True)
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.5 + chooser.random())  # stores in flight on every association
            server.kill9()
            for thread in threads:
                thread.join(timeout=60)
                assert not thread.is_alive(), "a sender hung after the kill"
            this_round = {uid: p for record in recorded for uid, p in record.items()}
            assert this_round, f"round {round_number}: nothing was stored before the kill"
            acknowledged.update(this_round)
            server.start()  # recovery runs before the DICOM port opens
            rows = check_consistent(server)
            assert rows >= len(acknowledged)
            server.stop()

        engine = make_engine(database_url)
        try:
            with engine.connect() as connection:
                stored = dict(
                    connection.execute(select(Instance.sop_instance_uid, Instance.file_path)).all()
                )
        finally:
            engine.dispose()
        missing = set(acknowledged) - set(stored)
        assert not missing, f"{len(missing)} acknowledged instances lost"
        root = server.data_dir / "storage"
        for uid, sent in acknowledged.items():
            assert dataset_bytes(root / stored[uid]) == dataset_bytes(sent), uid
    finally:
        server.stop()
    assert PATIENT_NAME not in server.log.read_text()
