from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    KeyObjectSelectionDocumentStorage,
    generate_uid,
)
from sqlalchemy import select

from qamqor.pacs.jobs import ArchiveWork
from qamqor.pacs.models import Study
from qamqor.pacs.parsing import ParsedInstance, parse_part10
from qamqor.pacs.service import StoreOutcome, StoreResult
from qamqor.pacs.stability import STUDY_STABLE, StableStudyWatcher
from qamqor.runtime import Runtime


def test_a_study_is_announced_once_after_its_last_instance(runtime: Runtime) -> None:
    heard: list[str] = []
    runtime.events.subscribe(
        STUDY_STABLE, lambda study_instance_uid: heard.append(study_instance_uid)
    )
    watcher = StableStudyWatcher(
        session_factory=runtime.session_factory, events=runtime.events, quiet_seconds=0.3
    )
    with open(get_testdata_file("CT_small.dcm"), "rb") as handle:
        parsed = parse_part10(handle.read())
    runtime.archive.store_instance(parsed, source="test")

    assert watcher.check_once() == []  # still within the quiet period
    time.sleep(0.4)
    study_uid = str(parsed.dataset.StudyInstanceUID)
    assert watcher.check_once() == [study_uid]
    assert watcher.check_once() == []  # announced once
    # A second watcher (another process) does not announce it again.
    other = StableStudyWatcher(
        session_factory=runtime.session_factory, events=runtime.events, quiet_seconds=0.3
    )
    assert other.check_once() == []
    assert heard == [study_uid]


def _ct(study: str, series: str) -> Dataset:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def _derived(image: Dataset, sop_class_uid: str, modality: str, series: str) -> Dataset:
    """A non-image object of ``image``'s study (what Qamqor stores itself: an AI result SR,
    a signed report's PDF), with no Pixel Data."""
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate"):
        setattr(ds, keyword, image.data_element(keyword).value)
    ds.StudyInstanceUID = image.StudyInstanceUID
    ds.SeriesInstanceUID = series
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    if modality == "DOC":
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    else:
        ds.ValueType = "CONTAINER"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _parsed(ds: Dataset) -> ParsedInstance:
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return parse_part10(buffer.getvalue())


def _stability(runtime: Runtime, study_uid: str) -> tuple[datetime | None, datetime]:
    with runtime.session_factory() as session:
        stable_at, last_instance_at = session.execute(
            select(Study.stable_at, Study.last_instance_at).where(
                Study.study_instance_uid == study_uid
            )
        ).one()
    return stable_at, last_instance_at


def test_reports_and_documents_added_to_a_stable_study_leave_it_stable_an_image_does_not(
    runtime: Runtime,
) -> None:
    """AI result SRs and signed-report PDFs that Qamqor stores into a study must not announce
    it stable again (the AI would look at it again for nothing); a new image must."""
    heard: list[str] = []
    runtime.events.subscribe(
        STUDY_STABLE, lambda study_instance_uid: heard.append(study_instance_uid)
    )
    watcher = StableStudyWatcher(
        session_factory=runtime.session_factory, events=runtime.events, quiet_seconds=0.3
    )
    study, images = generate_uid(), generate_uid()
    first = _ct(study, images)
    runtime.archive.store_instance(_parsed(first), source="test")
    time.sleep(0.4)
    assert watcher.check_once() == [study]
    stable = _stability(runtime, study)
    assert stable[0] is not None

    reports, documents = generate_uid(), generate_uid()
    derived = [
        _derived(first, ComprehensiveSRStorage, "SR", reports),  # a new series
        _derived(first, ComprehensiveSRStorage, "SR", reports),  # a series and class known
        _derived(first, EncapsulatedPDFStorage, "DOC", documents),
    ]
    for ds in derived:
        assert runtime.archive.store_instance(_parsed(ds), source="ai").outcome is (
            StoreOutcome.STORED
        )
    # A key object selection and another SR in one group (STOW-RS, ``qamqor import``).
    group = [
        _derived(first, KeyObjectSelectionDocumentStorage, "KO", reports),
        _derived(first, ComprehensiveSRStorage, "SR", reports),
    ]
    results = runtime.archive.store_instances([_parsed(ds) for ds in group], source="test")
    assert [r.outcome for r in results if isinstance(r, StoreResult)] == [StoreOutcome.STORED] * 2
    time.sleep(0.4)
    assert watcher.check_once() == []
    assert _stability(runtime, study) == stable  # still stable, since the same time
    assert heard == [study]

    # An image Qamqor derived from the study (an AI overlay, a Secondary Capture with pixels)
    # leaves it stable too: the archive is told it is derived.
    overlay = _ct(study, generate_uid())
    runtime.archive.store_instance(_parsed(overlay), source="ai", derived=True)
    time.sleep(0.4)
    assert watcher.check_once() == []
    assert _stability(runtime, study) == stable

    runtime.archive.store_instance(_parsed(_ct(study, images)), source="test")
    assert _stability(runtime, study)[0] is None  # an image: not stable until quiet again
    time.sleep(0.4)
    assert watcher.check_once() == [study]
    assert heard == [study, study]


def test_the_archive_attaches_its_watcher_itself(runtime: Runtime) -> None:
    """``qamqor serve`` and ``qamqor worker`` get the watcher through ``attach_jobs``."""
    from qamqor.capabilities import attach_jobs

    runtime.settings = runtime.settings.model_copy(update={"study_stable_seconds": 0.3})
    heard: list[str] = []
    runtime.events.subscribe(
        STUDY_STABLE, lambda study_instance_uid: heard.append(study_instance_uid)
    )
    attached = attach_jobs(runtime, None, sweep=False)
    try:
        assert any(isinstance(part, ArchiveWork) for part in attached)
        study = generate_uid()
        runtime.archive.store_instance(_parsed(_ct(study, generate_uid())), source="test")
        deadline = time.monotonic() + 10
        while not heard and time.monotonic() < deadline:
            time.sleep(0.05)
        assert heard == [study]
    finally:
        for part in attached:
            part.stop()


def test_a_stable_study_is_decoded_ahead_for_the_viewer(
    runtime: Runtime, shared_dicom_dir: Path
) -> None:
    """Where the work is done (``sweep``), the images of a study that became stable are
    decoded into the render cache, so its first opening does not wait for JPEG 2000."""
    from qamqor.pacs import jobs
    from qamqor.pacs.render_cache import RenderCache

    runtime.settings = runtime.settings.model_copy(update={"study_stable_seconds": 0.3})
    work = jobs.attach(runtime, None, sweep=True)
    try:
        assert work.prerenderer is not None
        chest = parse_part10((shared_dicom_dir / "RG1_J2KI.dcm").read_bytes())
        runtime.archive.store_instance(chest, source="test")
        cache = runtime.get(RenderCache)
        deadline = time.monotonic() + 30
        while not list(cache.folder.rglob("*.npy")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert work.prerenderer.done.wait(30)
        (decoded,) = cache.folder.rglob("*.npy")
        assert decoded.stat().st_size > 1841 * 1955  # the whole frame, 8 bits a pixel
    finally:
        work.stop()
