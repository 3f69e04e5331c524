"""Shared helpers of the benchmarks: test data, DICOM and STOW-RS clients, PostgreSQL schemas.

Everything runs on 127.0.0.1 in temporary directories that are removed afterwards; the servers
(``bench.servers``) are child processes of the benchmark and are stopped by it, also on Ctrl+C.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

ROOT = Path(__file__).resolve().parent.parent
QAMQOR_BIN = ROOT / ".venv" / "bin" / "qamqor"
ORTHANC_BIN = Path(os.environ.get("ORTHANC_BIN", "/usr/sbin/Orthanc"))
ORTHANC_DICOMWEB_PLUGIN = Path(
    os.environ.get("ORTHANC_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
)
#: Orthanc's PostgreSQL index (Debian: orthanc-postgresql), for runs on PostgreSQL.
ORTHANC_POSTGRESQL_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
POSTGRES_URL = os.environ.get(
    "QAMQOR_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
HOST = "127.0.0.1"
#: Our own UID root for generated data (pydicom's, followed by a random run id).
UID_ROOT = "1.2.826.0.1.3680043.8.498."
CALLING_AE = "BENCHSCU"
VERIFICATION = "1.2.840.10008.1.1"

BENCH_USER = "bench"
BENCH_PASSWORD = "bench-" + uuid.uuid4().hex  # new every run, never stored


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


def machine_description() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}"


# Test data -----------------------------------------------------------------------------------
def new_uid_prefix() -> str:
    """A prefix unique to this run, so that two runs never share a UID."""
    return f"{UID_ROOT}{uuid.uuid4().int % 10**12}."


def generate_ct_instances(
    directory: Path,
    count: int,
    *,
    studies: int = 10,
    series_per_study: int = 2,
    size: int = 128,
) -> list[Path]:
    """Write ``count`` small CT images (explicit VR little endian, 16-bit) as Part 10 files.

    Instances are spread over ``studies`` studies of ``series_per_study`` series each (one
    patient per study); every file has its own pixel data and unique UIDs.
    """
    directory.mkdir(parents=True, exist_ok=True)
    prefix = new_uid_prefix()
    rng = np.random.default_rng(12345)
    base = rng.integers(0, 1200, size=(size, size), dtype=np.int16)
    today = datetime.now(UTC).strftime("%Y%m%d")
    paths: list[Path] = []
    n_series = studies * series_per_study
    for index in range(count):
        series_index = index % n_series
        study_index = series_index // series_per_study
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = f"{prefix}3.{index + 1}"
        ds.StudyInstanceUID = f"{prefix}1.{study_index + 1}"
        ds.SeriesInstanceUID = f"{prefix}2.{series_index + 1}"
        ds.FrameOfReferenceUID = f"{prefix}4.{study_index + 1}"
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName = f"BENCH^PATIENT{study_index + 1:03d}"
        ds.PatientID = f"BENCH{study_index + 1:06d}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = today
        ds.StudyTime = "120000"
        ds.AccessionNumber = f"BA{study_index + 1:08d}"
        ds.ReferringPhysicianName = ""
        ds.StudyID = str(study_index + 1)
        ds.StudyDescription = "Benchmark CT"
        ds.Modality = "CT"
        ds.Manufacturer = "Qamqor bench"
        ds.SeriesNumber = series_index % series_per_study + 1
        ds.InstanceNumber = index // n_series + 1
        ds.KVP = "120"
        ds.SliceThickness = "1.0"
        ds.PixelSpacing = ["0.5", "0.5"]
        ds.ImagePositionPatient = ["0", "0", str(ds.InstanceNumber)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = (base + np.int16(index % 800)).tobytes()

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path = directory / f"ct{index + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed afterwards unless ``QAMQOR_BENCH_KEEP=1`` (debugging)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if os.environ.get("QAMQOR_BENCH_KEEP") == "1":
            print(f"(kept {path})")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks stop servers and remove files."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# PostgreSQL ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PostgresDatabase:
    """A database of its own on the local PostgreSQL (for Orthanc's index plugin)."""

    host: str
    port: int
    user: str
    password: str
    name: str


@contextlib.contextmanager
def postgres_database(prefix: str = "qamqor_bench_orthanc") -> Iterator[PostgresDatabase]:
    """A fresh database on the local PostgreSQL server, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = sa.make_url(POSTGRES_URL)
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PostgresDatabase(
            host=url.host or "127.0.0.1",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password or "",
            name=name,
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def postgres_schema(prefix: str = "qamqor_bench") -> Iterator[str]:
    """A fresh schema on the local PostgreSQL; yields a URL whose search_path is that schema."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def postgres_version() -> str:
    engine = sa.create_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            return str(connection.execute(sa.text("SHOW server_version")).scalar()).split()[0]
    finally:
        engine.dispose()


# DICOM clients ---------------------------------------------------------------------------------
def _quiet_pynetdicom() -> None:
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # Send each file's encoded bytes as they are, without decoding them first: the client then
    # costs little CPU, which matters when it shares 2 cores with the server it measures.
    _config.STORE_SEND_CHUNKED_DATASET = True
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _set_tcp_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN handler: disable Nagle's algorithm on the association's socket.

    pynetdicom does not set TCP_NODELAY. Without it, a C-STORE request (command and data set in
    separate PDUs) waits on Nagle's algorithm and the peer's delayed ACK: ~40 ms per instance on
    loopback. EVT_CONN_OPEN fires right after ``connect()``, before the A-ASSOCIATE-RQ is sent,
    so every PDU of the association goes out at once.
    """
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def associate(ae: Any, port: int, called_ae: str) -> Any:
    """An association to ``127.0.0.1:port`` with TCP_NODELAY and the reactor fix above."""
    from pynetdicom import evt

    from qamqor.pacs.dimse.fastpath import leave_responses_to_sender

    assoc = ae.associate(
        HOST, port, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, _set_tcp_nodelay)]
    )
    if assoc.is_established:
        # pynetdicom 3.0.4's reactor can drop a C-STORE-RSP: see the function's docstring.
        leave_responses_to_sender(assoc)
    return assoc


def c_echo(port: int, called_ae: str, *, timeout: float = 5.0) -> bool:
    from pynetdicom import AE

    _quiet_pynetdicom()
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(VERIFICATION)
    assoc = associate(ae, port, called_ae)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


@dataclass
class StoreReport:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    """CPU time the sender used from association request to release."""


def _store_worker(
    files: list[str],
    port: int,
    called_ae: str,
    barrier: Any,
    results: Any,
) -> None:
    """One association, in a process of its own (no GIL shared with the other senders)."""
    from pynetdicom import AE

    _quiet_pynetdicom()
    report = StoreReport()
    try:
        ae = AE(ae_title=CALLING_AE)
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        barrier.wait(timeout=120)
        cpu_start = time.process_time()
        assoc = associate(ae, port, called_ae)
        if not assoc.is_established:
            report.errors.append("association not established")
            report.failed = len(files)
        else:
            try:
                for path in files:
                    report.sent += 1
                    status = assoc.send_c_store(path)
                    if status and status.Status == 0:
                        report.succeeded += 1
                    else:
                        report.failed += 1
                        code = f"0x{status.Status:04X}" if status else "no response"
                        if len(report.errors) < 5:
                            report.errors.append(f"C-STORE status {code}")
            finally:
                if assoc.is_established:
                    assoc.release()
        report.cpu_seconds = time.process_time() - cpu_start
    except Exception as exc:  # reported to the parent, which fails the run
        report.errors.append(f"{type(exc).__name__}: {exc}")
    results.put(report)


def store_concurrently(
    files: Sequence[Path], *, port: int, called_ae: str, associations: int
) -> tuple[float, StoreReport]:
    """Send ``files`` over ``associations`` concurrent associations; seconds and a report.

    Each association runs in its own process and sends an equal share. The clock starts when
    every sender is ready (imports done, files listed) and stops when the last one has released
    its association, so it includes association set-up and release.
    """
    # Fork only once pynetdicom's threads from an earlier association (the readiness C-ECHO)
    # have ended: a fork while another thread holds a lock can leave the child stuck.
    wait_until(lambda: threading.active_count() == 1, timeout=10, what="client threads to end")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(associations + 1)
    results = context.Queue()
    shares = [[str(p) for p in files[i::associations]] for i in range(associations)]
    workers = [
        context.Process(target=_store_worker, args=(share, port, called_ae, barrier, results))
        for share in shares
    ]
    for worker in workers:
        worker.start()
    total = StoreReport()
    try:
        barrier.wait(timeout=120)
        started = time.perf_counter()
        for _ in workers:
            report: StoreReport = results.get(timeout=1800)
            total.sent += report.sent
            total.succeeded += report.succeeded
            total.failed += report.failed
            total.errors.extend(report.errors)
            total.cpu_seconds += report.cpu_seconds
        elapsed = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    return elapsed, total


def store_with_storescu(
    files: Sequence[Path], *, port: int, called_ae: str, associations: int
) -> tuple[float, StoreReport]:
    """Send ``files`` with DCMTK's ``storescu``, one process (one association) per share.

    A sender that uses little CPU of its own: pynetdicom's senders poll every millisecond in
    two threads while they wait for a response, so with 8 of them on 2 cores a slower server
    also loses CPU to its clients. ``storescu`` reads every file of its share before it
    associates; the clock runs from the start of the processes to the end of the last, so
    that reading, association set-up and release are included (the same for every server).
    ``TCP_NODELAY=1`` turns Nagle's algorithm off in DCMTK. The senders' CPU time is reported.
    """
    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("storescu is missing: apt-get install dcmtk")
    env = {**os.environ, "TCP_NODELAY": "1"}
    shares = [[str(p) for p in files[i::associations]] for i in range(associations)]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [storescu, "-R", "-aet", CALLING_AE, "-aec", called_ae, HOST, str(port), *share],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for share in shares
    ]
    outputs = [sender.communicate(timeout=1800)[0] for sender in senders]
    elapsed = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    report = StoreReport(sent=len(files))
    report.cpu_seconds = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    for sender, output, share in zip(senders, outputs, shares, strict=True):
        # storescu is quiet on success; failure lines are counted as best it can be read from
        # its log (the run's real check is the archive's instance count afterwards).
        failed = output.count("Store SCU Failed") + output.count("Store Failed")
        if sender.returncode != 0 and not failed:
            failed = len(share)
        report.failed += failed
        report.succeeded += len(share) - failed
        if (failed or sender.returncode) and len(report.errors) < 5:
            report.errors.append(f"storescu exit {sender.returncode}: {output.strip()[-300:]}")
    return elapsed, report


# STOW-RS ---------------------------------------------------------------------------------------
def multipart_related(files: Sequence[Path]) -> tuple[bytes, str]:
    """A STOW-RS request body (``multipart/related; type="application/dicom"``)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for path in files:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        parts.append(path.read_bytes())
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(parts), content_type


def stow(
    url: str, body: bytes, content_type: str, auth: tuple[str, str]
) -> tuple[float, httpx.Response]:
    """POST one STOW-RS request; seconds taken (upload, storing, answer) and the response."""
    with httpx.Client(timeout=900) as client:
        started = time.perf_counter()
        response = client.post(
            url,
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
            auth=auth,
        )
        elapsed = time.perf_counter() - started
    return elapsed, response


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 = median)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]
