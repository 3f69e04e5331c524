"""No analysis is lost when a worker dies mid-job: a real ``qamqor worker`` is killed with SIGKILL
while it analyses a real mammogram; a second worker finds the stale claim and finishes it.
Also: a stable study is queued on its own, and a job that fails for good is listed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pipeline_helpers import install_test_models, store_files
from pydicom import dcmread
from sqlalchemy import select

from qamqor.ai.models import AIStudy
from qamqor.ai.pipeline import JOB_NAME, AIPipeline
from qamqor.ai.registry import ModelStore
from qamqor.core.jobs import JobQueue, make_huey
from qamqor.core.models import JobFailure
from qamqor.pacs.stability import STUDY_STABLE, StableStudyWatcher
from qamqor.runtime import Runtime

QAMQOR = str(Path(sys.executable).with_name("qamqor"))
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _row(runtime: Runtime, uid: str) -> AIStudy | None:
    with runtime.session_factory() as session:
        return session.scalar(select(AIStudy).where(AIStudy.study_instance_uid == uid))


def _status(runtime: Runtime, uid: str) -> str:
    row = _row(runtime, uid)
    return row.status if row else ""


@pytest.fixture
def workers(runtime: Runtime, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    settings = runtime.settings
    env = {
        **os.environ,
        "QAMQOR_DATA_DIR": str(settings.data_dir),
        "QAMQOR_DATABASE_URL": settings.effective_database_url,
        "QAMQOR_AI_STALE_SECONDS": "2",
        "QAMQOR_REDIS_URL": "",
    }

    def start() -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [QAMQOR, "worker", "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Huey's graceful stop
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_worker_killed_mid_job_does_not_lose_the_analysis(
    runtime: Runtime,
    shared_dicom_dir: Path,
    workers: Callable[[], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    mg_path = shared_dicom_dir / "MG1_J2KI.dcm"
    store_files(runtime, mg_path)
    install_test_models(runtime)
    uid = dcmread(mg_path, stop_before_pixels=True).StudyInstanceUID
    # This process plays 'qamqor serve' without workers: it announces the stable study and
    # queues the job (SQLite queue in the data dir, as by default).
    queue = JobQueue(huey=make_huey(runtime.settings), session_factory=runtime.session_factory)
    pipeline = AIPipeline(
        session_factory=runtime.session_factory,
        archive=runtime.archive,
        models=ModelStore(runtime.settings.data_dir / "models"),
        queue=queue,
        stale_seconds=2,
    )
    runtime.events.subscribe(STUDY_STABLE, pipeline.on_study_stable)
    watcher = StableStudyWatcher(
        session_factory=runtime.session_factory, events=runtime.events, quiet_seconds=0.01
    )
    time.sleep(0.05)
    assert watcher.check_once() == [uid]
    assert _status(runtime, uid) == "queued" and queue.pending() == 1

    first = workers()
    _wait_for(lambda: _status(runtime, uid) == "running", 120, "the first worker to claim it")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    row = _row(runtime, uid)
    assert row is not None and (row.status, row.attempts) == ("running", 1)  # killed mid-job
    assert queue.pending() == 0  # the message went with the worker: only the row remembers

    workers()
    _wait_for(lambda: _status(runtime, uid) == "done", 180, "the second worker to finish it")
    row = _row(runtime, uid)
    assert row is not None
    assert row.attempts == 2 and row.priority in ("high", "medium", "low")
    assert row.task == "mammo" and row.model == "tiny-mammo-1.2.3"
    with runtime.session_factory() as session:
        instances = runtime.archive.instances_of(session, study_instance_uid=uid)
    reports = [i for i in instances if i.sop_class_uid == SR_CLASS]
    assert len(reports) == 1 and reports[0].sop_instance_uid == row.report_sop_instance_uid
    report = dcmread(io.BytesIO(runtime.archive.read_instance_bytes(row.report_sop_instance_uid)))
    assert report.StudyInstanceUID == uid
    # Our own results (SR, overlays: derived objects) leave the study stable: no second
    # "study stable", no second analysis.
    time.sleep(0.05)
    assert watcher.check_once() == []
    assert _status(runtime, uid) == "done" and queue.pending() == 0


def test_a_study_that_keeps_killing_workers_is_failed_and_listed(runtime: Runtime) -> None:
    pipeline = AIPipeline(
        session_factory=runtime.session_factory,
        archive=runtime.archive,
        models=ModelStore(runtime.settings.data_dir / "models", shipped_dir=None),
        queue=None,
        stale_seconds=1,
    )
    from datetime import timedelta

    from qamqor.core.db import utcnow

    with runtime.session_factory() as session:
        session.add(
            AIStudy(
                study_instance_uid="1.2.3.4",
                status="running",
                attempts=3,
                heartbeat_at=utcnow() - timedelta(seconds=5),
            )
        )
        session.add(
            AIStudy(
                study_instance_uid="1.2.3.5",
                status="running",
                attempts=1,
                heartbeat_at=utcnow() - timedelta(seconds=5),
            )
        )
        session.commit()
    assert pipeline.sweep() == ["1.2.3.5"]
    gone = _row(runtime, "1.2.3.4")
    assert gone is not None and (gone.status, gone.priority) == ("failed", "not_analysed")
    assert "worker stopped 3 times" in gone.reason
    assert _status(runtime, "1.2.3.5") == "queued"
    with runtime.session_factory() as session:
        (failure,) = session.scalars(select(JobFailure)).all()
    assert (failure.job, failure.arguments, failure.error_type) == (
        JOB_NAME,
        "1.2.3.4",
        "WorkerLost",
    )


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    import shutil
    import socket

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian: redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_with_redis_the_jobs_run_on_qamqor_worker_processes(
    runtime: Runtime, shared_dicom_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    cr_path = shared_dicom_dir / "RG1_J2KI.dcm"
    store_files(runtime, cr_path)
    install_test_models(runtime)
    uid = dcmread(cr_path, stop_before_pixels=True).StudyInstanceUID
    settings = runtime.settings.model_copy(update={"redis_url": redis_url})
    queue = JobQueue(huey=make_huey(settings), session_factory=runtime.session_factory)
    pipeline = AIPipeline(
        session_factory=runtime.session_factory,
        archive=runtime.archive,
        models=ModelStore(settings.data_dir / "models"),
        queue=queue,
    )
    pipeline.on_study_stable(uid)
    assert queue.pending() == 1 and not (settings.data_dir / "jobs.db").exists()
    env = {
        **os.environ,
        "QAMQOR_DATA_DIR": str(settings.data_dir),
        "QAMQOR_DATABASE_URL": settings.effective_database_url,
        "QAMQOR_REDIS_URL": redis_url,
    }
    log = (tmp_path / "redis-worker.log").open("wb")
    worker = subprocess.Popen(
        [QAMQOR, "worker", "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait_for(lambda: _status(runtime, uid) == "done", 180, "the worker to analyse it")
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    row = _row(runtime, uid)
    assert row is not None and row.task == "chest" and row.worker.endswith(f":{worker.pid}")


def test_failed_analyses_are_listed_for_admins(runtime: Runtime) -> None:
    from fastapi.testclient import TestClient

    from qamqor.core.auth import create_user
    from qamqor.web.app import create_app

    with runtime.session_factory() as session:
        session.add(
            JobFailure(
                job=JOB_NAME,
                task_id="t1",
                arguments="1.2.3.9",
                error_type="AIError",
                reason="the DICOM results could not be built (TypeError)",
            )
        )
        session.add(JobFailure(job="other.job", task_id="t2", arguments="x", error_type="E"))
        create_user(session, username="boss", password="admin-password", role="admin")
        create_user(session, username="rad", password="rad-password", role="radiologist")
        session.commit()
    client = TestClient(create_app(runtime))
    assert client.get("/api/ai/failures").status_code == 401
    assert client.get("/api/ai/failures", auth=("rad", "rad-password")).status_code == 403
    listed = client.get("/api/ai/failures", auth=("boss", "admin-password")).json()
    assert [(f["study_instance_uid"], f["error_type"], f["reason"]) for f in listed] == [
        ("1.2.3.9", "AIError", "the DICOM results could not be built (TypeError)")
    ]
