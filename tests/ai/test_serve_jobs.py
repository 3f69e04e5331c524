"""The way ``qamqor serve`` runs it: a study arrives over DICOM (C-STORE by DCMTK's storescu), is
announced stable, analysed by the job workers inside the process, and gets its priority."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from qamqor.ai.models import AIStudy
from qamqor.capabilities import attach_jobs
from qamqor.core.jobs import JobQueue, make_huey
from qamqor.pacs.stability import StableStudyWatcher
from qamqor.runtime import Runtime


@pytest.mark.dcmtk
def test_a_stored_chest_film_gets_its_priority_seconds_after_its_last_image(
    runtime: Runtime, shared_dicom_dir: Path
) -> None:
    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed")
    from qamqor.pacs.dimse import DicomNode

    settings = runtime.settings.model_copy(
        update={"dicom_accept_unknown_aes": True, "study_stable_seconds": 1.0}
    )
    runtime.settings = settings
    queue = JobQueue(huey=make_huey(settings), session_factory=runtime.session_factory)
    attached = attach_jobs(runtime, queue)
    queue.start_workers(2)
    node = DicomNode(settings=settings, archive=runtime.archive)
    node.start()
    watcher = StableStudyWatcher(
        session_factory=runtime.session_factory,
        events=runtime.events,
        quiet_seconds=settings.study_stable_seconds,
        poll_seconds=0.1,
    )
    watcher.start()
    path = shared_dicom_dir / "RG1_J2KI.dcm"
    uid = dcmread(path, stop_before_pixels=True).StudyInstanceUID
    try:
        sent = subprocess.run(
            [
                "storescu",
                "-xw",  # propose JPEG 2000 (with the uncompressed syntaxes)
                "-aec",
                settings.dicom_ae_title,
                "127.0.0.1",
                str(settings.dicom_port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        stored_at = time.monotonic()
        row = None
        while time.monotonic() - stored_at < 60:
            with runtime.session_factory() as session:
                row = session.scalar(select(AIStudy).where(AIStudy.study_instance_uid == uid))
            if row is not None and row.status == "done":
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - stored_at
        assert row is not None and row.status == "done"
        assert row.task == "chest" and row.priority in ("high", "medium", "low")
        assert elapsed < 30  # seconds, not minutes (1 s of quiet, then the analysis)
    finally:
        watcher.stop()
        queue.stop_workers()
        for part in attached:
            part.stop()
        node.stop()
