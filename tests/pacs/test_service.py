"""The archive service on SQLite and PostgreSQL: store, deduplicate, index, reject."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from qamqor.pacs.errors import InvalidInstanceError
from qamqor.pacs.parsing import parse_part10
from qamqor.pacs.query import Level, search
from qamqor.pacs.service import StoreOutcome
from qamqor.runtime import Runtime


def _store(runtime: Runtime, path: Path | str) -> StoreOutcome:
    parsed = parse_part10(Path(path).read_bytes())
    return runtime.archive.store_instance(parsed, source="test").outcome


def test_real_files_are_stored_indexed_and_read_back_byte_for_byte(
    runtime: Runtime, shared_dicom_dir: Path
) -> None:
    files = sorted(shared_dicom_dir.glob("*.dcm"))
    for path in files:
        assert _store(runtime, path) is StoreOutcome.STORED
    assert runtime.archive.count()["instances"] == len(files)
    for path in files:
        original = path.read_bytes()
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert runtime.archive.read_instance_bytes(uid) == original


def test_second_send_of_same_instance_is_idempotent(runtime: Runtime) -> None:
    path = get_testdata_file("CT_small.dcm")
    assert _store(runtime, path) is StoreOutcome.STORED
    assert _store(runtime, path) is StoreOutcome.ALREADY_PRESENT
    counts = runtime.archive.count()
    assert counts["instances"] == 1
    with runtime.session_factory() as session:
        (study,) = search(session, level=Level.STUDY, criteria={})
    assert study.NumberOfStudyRelatedInstances == 1
    assert study.ModalitiesInStudy == "CT"
    # No staged copy is left behind.
    assert not [p for p in runtime.archive.storage.staging.iterdir()]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda data: b"hello, this is not DICOM at all" * 10, "not a DICOM file"),
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: b"", "empty"),
    ],
)
def test_bad_input_is_rejected_with_a_reason_and_nothing_is_stored(
    runtime: Runtime, mutate, reason: str
) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    with pytest.raises(InvalidInstanceError, match=reason):
        parse_part10(mutate(data))
    assert runtime.archive.count()["instances"] == 0


def test_missing_uid_and_contradicting_pixel_data_are_rejected(tmp_path: Path) -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "no-study.dcm")
    with pytest.raises(InvalidInstanceError, match="StudyInstanceUID is missing"):
        parse_part10((tmp_path / "no-study.dcm").read_bytes())

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Rows * 2  # header now promises twice the pixels there are
    ds.save_as(tmp_path / "short-pixels.dcm")
    with pytest.raises(InvalidInstanceError, match="Pixel Data has"):
        parse_part10((tmp_path / "short-pixels.dcm").read_bytes())


def test_query_matching_rules(runtime: Runtime) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm", "rtdose.dcm"):
        with contextlib.suppress(InvalidInstanceError):
            _store(runtime, get_testdata_file(name))
    with runtime.session_factory() as session:
        all_studies = search(session, level=Level.STUDY, criteria={})
        assert len(all_studies) >= 2
        ct = search(session, level=Level.STUDY, criteria={"ModalitiesInStudy": "CT"})
        assert [s.ModalitiesInStudy for s in ct] == ["CT"]
        name = str(ct[0].PatientName)
        lowered = name[:3].lower() + "*"
        assert search(session, level=Level.STUDY, criteria={"PatientName": lowered})
        date = ct[0].StudyDate
        assert search(session, level=Level.STUDY, criteria={"StudyDate": f"{date}-"})
        assert not search(session, level=Level.STUDY, criteria={"StudyDate": "-19000101"})
        series = search(
            session, level=Level.SERIES, criteria={"StudyInstanceUID": ct[0].StudyInstanceUID}
        )
        assert len(series) == 1 and series[0].Modality == "CT"


def test_prefix_matching_of_names_ids_and_accessions(runtime: Runtime, tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    people = [
        ("ИВАНОВ^ПЕТР", "870101300123", "A100"),
        ("Иванова^Анна", "870101400456", "A101"),
        ("IVANOV^P", "990101300789", "B200"),
        ("ИВАНЯН^А", "870101300999", "A1000"),
    ]
    for name, patient_id, accession in people:
        ds = dcmread(get_testdata_file("CT_small.dcm"))
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.AccessionNumber = name, patient_id, accession
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / "x.dcm")
        _store(runtime, tmp_path / "x.dcm")

    def names(**criteria: str) -> list[str]:
        with runtime.session_factory() as session:
            found = search(session, level=Level.STUDY, criteria=criteria)
        return sorted(str(s.PatientName) for s in found)

    # Names match in any case, in Cyrillic as in Latin; a prefix is a prefix, not a substring.
    assert names(PatientName="иванов*") == sorted(["Иванова^Анна", "ИВАНОВ^ПЕТР"])
    assert names(PatientName="ИВАН*") == sorted(["Иванова^Анна", "ИВАНОВ^ПЕТР", "ИВАНЯН^А"])
    assert names(PatientName="ivanov*") == ["IVANOV^P"]
    assert names(PatientName="*ОВ^*") == ["ИВАНОВ^ПЕТР"]
    assert names(PatientID="8701013*") == sorted(["ИВАНОВ^ПЕТР", "ИВАНЯН^А"])
    assert names(AccessionNumber="A10*") == sorted(["Иванова^Анна", "ИВАНОВ^ПЕТР", "ИВАНЯН^А"])
    assert names(AccessionNumber="A100") == ["ИВАНОВ^ПЕТР"]


@pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "AccessionNumber"])
def test_prefix_queries_are_index_ranges_not_scans(keyword: str) -> None:
    from qamqor.pacs.query import build_query

    sql = str(build_query(Level.STUDY, {keyword: "PAK*"}).compile())
    assert " LIKE " not in sql  # a LIKE here would scan every patient (see bench/README.md)
    assert ">=" in sql and "<" in sql
