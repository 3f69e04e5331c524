"""kill -9 of ``qamqor serve`` in the middle of a C-STORE, then a restart: nothing half-stored.

The server runs as a real process (the ``qamqor`` command) on SQLite and on PostgreSQL; DCMTK's
storescu sends a 20 MB instance and the process is killed at chosen moments of the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from qamqor.core.db import make_engine
from qamqor.pacs.models import Instance
from tests.conftest import BOTH_PATHS, free_port

pytestmark = [pytest.mark.dcmtk, BOTH_PATHS]

QAMQOR = Path(sys.executable).parent / "qamqor"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
PATIENT_NAME = "Crash^Test"
MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def big_instance(path: Path) -> Dataset:
    """A 20 MB mammogram of noise (uncompressed, so the store takes a while)."""
    rows, columns = 4096, 2560
    ds = Dataset()
    ds.SOPClassUID = MAMMOGRAPHY_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "CRASH-1"
    ds.Modality = "MG"
    ds.StudyDate = "20240301"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    noise = np.random.default_rng(7).integers(0, 4096, size=(rows, columns), dtype=np.uint16)
    ds.PixelData = noise.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return ds


class Server:
    """``qamqor serve`` in a child process of its own."""

    def __init__(self, data_dir: Path, database_url: str, log: Path) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.log = log
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def staging(self) -> Path:
        return self.data_dir / "storage" / "tmp"

    def start(self) -> None:
        env = {
            **os.environ,
            "QAMQOR_DATABASE_URL": self.database_url,
            "QAMQOR_DICOM_HOST": "127.0.0.1",
            "QAMQOR_DICOM_ACCEPT_UNKNOWN_AES": "true",
        }
        command = [
            str(QAMQOR), "serve", "--data-dir", str(self.data_dir),
            "--http-port", str(self.http_port), "--dicom-port", str(self.dicom_port),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while self.echo() != 0:
            if self.process.poll() is not None:
                pytest.fail(f"qamqor serve exited: {self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("qamqor serve did not answer C-ECHO within 60 s")
            time.sleep(0.1)
        # On the path the test asks for (the environment's, see tests/conftest.py).
        path = "plain" if os.environ.get("QAMQOR_DICOM_FAST_PATH") == "off" else "fast"
        assert f", {path} path (pynetdicom" in self.log.read_text()

    def echo(self) -> int:
        return subprocess.run(
            ["echoscu", "-to", "2", "-aec", "QAMQOR", "127.0.0.1", str(self.dicom_port)],
            env=DCMTK_ENV,
            capture_output=True,
        ).returncode

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
            self.process = None

    def storescu(self, path: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["storescu", "-aec", "QAMQOR", "127.0.0.1", str(self.dicom_port), str(path)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[Server]:
    running = Server(tmp_path / "data", database_url, tmp_path / "serve.log")
    try:
        yield running
    finally:
        running.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("the moment to kill the server never came")
        time.sleep(0.001)


def staged_files(server: Server) -> list[Path]:
    return list(server.staging.iterdir()) if server.staging.is_dir() else []


def check_consistent(server: Server) -> int:
    """Every stored file has its row and every row its file; staging is empty."""
    root = server.data_dir / "storage"
    files = {
        str(p.relative_to(root))
        for p in root.rglob("*.dcm")
        if p.is_file() and server.staging not in p.parents
    }
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as connection:
            rows = set(connection.scalars(select(Instance.file_path)))
    finally:
        engine.dispose()
    assert files == rows
    assert staged_files(server) == []
    for relative in files:  # a file under its final name is whole
        assert dcmread(root / relative).pixel_array.size > 0
    return len(rows)


def test_kill_9_during_stores_leaves_a_clean_archive(server: Server, tmp_path: Path) -> None:
    big = tmp_path / "big.dcm"
    sent = big_instance(big)
    size = big.stat().st_size

    def staged_started() -> bool:
        return bool(staged_files(server))

    def staged_complete() -> bool:
        # Written out: the node is fsyncing it, committing its row or renaming it.
        return any(p.exists() and p.stat().st_size >= size - 512 for p in staged_files(server))

    # (A kill while the data set is still on the wire touches nothing on disk: the cases
    # worth a restart each are these two.)
    moments: list[Callable[[], None]] = [
        lambda: wait_for(staged_started),  # while the file is being written
        lambda: wait_for(staged_complete),  # between fsync, commit and rename
    ]
    server.start()
    for moment in moments:
        sender = server.storescu(big)
        try:
            moment()
            server.kill9()
        finally:
            sender.wait(timeout=60)
        server.start()  # recovery runs before the DICOM port opens
        assert check_consistent(server) in (0, 1)
        assert server.echo() == 0

    # After the crashes the node stores (or finds already stored) and serves the instance.
    assert server.storescu(big).wait(timeout=120) == 0
    assert check_consistent(server) == 1
    out = tmp_path / "got"
    out.mkdir()
    got = subprocess.run(
        ["getscu", "-S", "-aec", "QAMQOR", "-pdu", "131072", "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={sent.StudyInstanceUID}",
         "127.0.0.1", str(server.dicom_port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    (copy,) = [dcmread(p) for p in out.iterdir()]
    assert copy.SOPInstanceUID == sent.SOPInstanceUID
    assert copy.PixelData == sent.PixelData
    server.stop()
    log = server.log.read_text()
    # The kills did hit stores in flight: the restarts found staged files to settle.
    assert "recovered interrupted stores" in log
    assert PATIENT_NAME not in log


def test_serve_stops_on_sigterm_sent_as_soon_as_it_answers(server: Server) -> None:
    # A service manager may stop it right after start-up: the signal used to come before the
    # web server had taken the signals over, was swallowed, and serve ran on until killed.
    for _ in range(2):
        server.start()
        assert server.process is not None
        server.process.terminate()
        assert server.process.wait(timeout=15) in (0, -signal.SIGTERM)
        server.process = None
