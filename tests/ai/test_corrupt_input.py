"""A corrupt instance in the archive (stored before the store path checked every element, or
damaged on disk) fails its own image's analysis only, and nothing of it reaches the logs:
neither the patient's name or ID nor the bytes pydicom could not read."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import replace

import pytest
from dicom_factory import mammogram
from pipeline_helpers import install_test_models
from pydicom import dcmwrite
from sqlalchemy import select

from qamqor.ai.models import AIStudy
from qamqor.ai.pipeline import AIPipeline
from qamqor.ai.registry import ModelStore
from qamqor.core.jobs import JobQueue, make_huey
from qamqor.pacs.errors import InvalidInstanceError
from qamqor.pacs.parsing import parse_part10
from qamqor.runtime import Runtime

NAME, PATIENT_ID = "SECRET^PATIENT", "870101300123"
#: Bytes where Samples per Pixel (US: 2 bytes) should be: 15 of them, the name among them.
CORRUPT_VALUE = b"SECRET^PATIENT."


def _encoded(ds) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _corrupt_mammogram() -> tuple[str, bytes, bytes]:
    """(study UID, a valid mammogram, the same with a Samples per Pixel of 15 bytes)."""
    ds = mammogram(PatientName=NAME, PatientID=PATIENT_ID)
    good = _encoded(ds)
    samples = b"\x28\x00\x02\x00US\x02\x00\x01\x00"  # Explicit VR Little Endian
    assert good.count(samples) == 1
    corrupt = good.replace(samples, samples[:6] + b"\x0f\x00" + CORRUPT_VALUE)
    return str(ds.StudyInstanceUID), good, corrupt


def test_the_store_path_refuses_it(runtime: Runtime) -> None:
    _, _, corrupt = _corrupt_mammogram()
    with pytest.raises(InvalidInstanceError, match=r"\(0028,0002\) has 15 bytes") as refused:
        parse_part10(corrupt)
    assert "SECRET" not in refused.value.message


def test_an_analysis_job_on_a_corrupt_instance_logs_no_patient_data(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    study, good, corrupt = _corrupt_mammogram()
    # Past the store path's checks, as if it had been archived before them.
    checked = parse_part10(good)
    (stored,) = runtime.archive.store_instances([replace(checked, data=corrupt)], source="test")
    assert not isinstance(stored, Exception)

    queue = JobQueue(
        huey=make_huey(runtime.settings, immediate=True), session_factory=runtime.session_factory
    )
    pipeline = AIPipeline(
        session_factory=runtime.session_factory,
        archive=runtime.archive,
        models=ModelStore(install_test_models(runtime)),
        queue=queue,
    )
    caplog.set_level(logging.DEBUG)
    pipeline.on_study_stable(study)  # the job runs at once (Huey's immediate mode)

    logged = caplog.text + "".join(
        str(record.exc_info) + str(record.args) for record in caplog.records
    )
    assert "analysis" in caplog.text  # the failure is logged...
    for secret in (NAME, "SECRET", PATIENT_ID):  # ...without the patient
        assert secret not in logged
    assert not re.search(r"b'|\\x[0-9a-f]{2}", caplog.text)  # nor raw bytes
    with runtime.session_factory() as session:
        row = session.scalar(select(AIStudy).where(AIStudy.study_instance_uid == study))
    assert row is not None
    assert row.status == "done"  # the corrupt image is left out, the study is finished
    assert "SECRET" not in row.reason and PATIENT_ID not in row.reason
    assert "cannot be read" in row.reason
