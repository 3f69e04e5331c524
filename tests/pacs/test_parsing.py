"""Parsing of incoming data: the fast paths give what pydicom's own reading gives."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import BaseTag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from qamqor.pacs.errors import InvalidInstanceError
from qamqor.pacs.parsing import (
    IndexValues,
    _check_uid,
    _meta_end,
    parse_part10,
    parse_received,
    read_dataset_checked,
)

KEYWORDS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "PatientName",
    "PatientID",
    "ReferringPhysicianName",
    "StudyDate",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
    "ImageType",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PixelSpacing",
    "InstitutionName",
    "NotInTheFile",
]


def _reencoded(ds: Dataset, *, implicit: bool) -> bytes:
    ds.setdefault("SOPClassUID", CTImageStorage)
    ds.setdefault("SOPInstanceUID", "1.2.3.4")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def _file(name: str) -> str:
    if name.startswith("chr"):  # character sets: Russian, Japanese (ISO 2022), Korean
        (path,) = get_charset_files(name)
        return str(path)
    return str(get_testdata_file(name))


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "chrRuss.dcm", "chrH31.dcm", "chrKoreanMulti.dcm"]
)
@pytest.mark.parametrize("implicit", [False, True])
def test_index_values_equal_dataset_get(name: str, implicit: bool) -> None:
    ds = dcmread(_file(name))
    expected_ds = dcmread(io.BytesIO(_reencoded(ds, implicit=implicit)))
    values = IndexValues(dcmread(io.BytesIO(_reencoded(ds, implicit=implicit))))
    for keyword in KEYWORDS:
        assert values.get(keyword) == expected_ds.get(keyword), keyword
        assert values.get(keyword) == expected_ds.get(keyword), keyword  # kept, same answer
    assert values.text("PatientName", 8) == str(expected_ds.get("PatientName", ""))[:8].strip()
    assert values.person_name("PatientName") == str(expected_ds.get("PatientName", ""))
    assert values.integer("Rows") == expected_ds.get("Rows")
    # Every integer value (read from its bytes where that is plain) as pydicom converts it
    # (elements whose VR depends on another, "US or SS", are not indexed).
    numbers = [
        e
        for e in expected_ds
        if e.VR in ("US", "SS", "UL", "SL", "IS")
        and e.keyword
        and " or " not in dictionary_VR(e.tag)
    ]
    assert numbers
    for element in numbers:
        fresh = IndexValues(dcmread(io.BytesIO(_reencoded(ds, implicit=implicit))))
        assert fresh.integer(element.keyword) == _as_integer(element.value), element.keyword
    assert values.integer("NotInTheFile") is None
    assert values.text("NotInTheFile", 16) == ""


def _as_integer(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def test_integers_that_are_not_plain_are_read_as_pydicom_reads_them() -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    cases = {"InstanceNumber": "+12 ", "SeriesNumber": "1\\2", "AcquisitionNumber": " 7"}
    for keyword, text in cases.items():
        setattr(ds, keyword, text)
    ds.NumberOfFrames = ""
    values = IndexValues(dcmread(io.BytesIO(_reencoded(ds, implicit=False))))
    assert values.integer("InstanceNumber") == 12
    assert values.integer("SeriesNumber") is None  # two values: not one number
    assert values.integer("AcquisitionNumber") == 7
    assert values.integer("NumberOfFrames") is None


def test_multi_valued_text_is_joined_with_backslashes() -> None:
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    values = IndexValues(dcmread(io.BytesIO(_reencoded(ds, implicit=False))))
    assert values.text("ImageType", 64) == "\\".join(ds.ImageType)


UID_CASES = [
    b"1.2.840.10008.5.1.4.1.1.2",
    b"1.2.3.4\x00",  # padded with NUL (PS3.5 6.2)
    b"1.2.3.4 ",  # padded with a space, as some writers do
    b" 1.2.3",
    b"1.02.3",  # a component with a leading zero: not valid
    b"1.2.3a",
    b"1." + b"2" * 63,  # 65 characters
    b"1.2\\1.3",  # two values
    b"",
    b"\x00",
    "1.2.3\u00e9".encode("latin-1"),
]


def _check_outcome(values: IndexValues) -> str:
    try:
        return _check_uid(values, "SOPInstanceUID")
    except InvalidInstanceError as error:
        return f"refused: {error}"


@pytest.mark.parametrize("raw", UID_CASES)
def test_uids_read_from_their_bytes_are_checked_as_pydicom_reads_them(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def data_set() -> Dataset:
        tag = 0x00080018  # SOPInstanceUID
        return Dataset({tag: RawDataElement(BaseTag(tag), "UI", len(raw), raw, 0, False, True)})

    fast = _check_outcome(IndexValues(data_set()))
    monkeypatch.setattr(IndexValues, "raw_uid", lambda self, keyword: None)
    assert fast == _check_outcome(IndexValues(data_set()))


@pytest.mark.parametrize("implicit", [False, True])
def test_received_data_set_parses_as_its_file_does(implicit: bool) -> None:
    data = _reencoded(dcmread(get_testdata_file("CT_small.dcm")), implicit=implicit)
    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    whole = parse_part10(data)
    received = parse_received(data, _meta_end(data), syntax, whole.sop_instance_uid)
    assert received.data == data
    assert received.transfer_syntax_uid == whole.transfer_syntax_uid
    for field in ("sop_class_uid", "sop_instance_uid", "study_instance_uid"):
        assert getattr(received, field) == getattr(whole, field)
    assert received.series_instance_uid == whole.series_instance_uid
    for keyword in KEYWORDS:
        assert received.values.get(keyword) == whole.values.get(keyword), keyword


# pydicom's own test files stored uncompressed in little endian (shipped with it, no download)
LITTLE_ENDIAN_FILES = [
    "CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_padded.dcm",
    "SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmd.dcm",
    "badVR.dcm", "empty_charset_LEI.dcm", "examples_overlay.dcm", "examples_palette.dcm",
    "examples_rgb_color.dcm", "liver_1frame.dcm", "nested_priv_SQ.dcm",
    "no_meta_group_length.dcm", "priv_SQ.dcm", "reportsi.dcm",
    "reportsi_with_empty_number_tags.dcm", "rtdose.dcm", "rtdose_1frame.dcm", "rtplan.dcm",
    "test-SR.dcm", "waveform_ecg.dcm",
]  # fmt: skip


def _pydicom_read(data: bytes, implicit: bool) -> Dataset:
    buffer = io.BytesIO(data)
    buffer.seek(_meta_end(data))
    return read_dataset(buffer, implicit, True)


#: pydicom's files the one-pass reader refuses, and why: a number that is no number, an
#: element of group 0001 (PS3.5 7.8.1: groups 0001, 0003, 0005 and 0007 are not allowed).
REFUSED_FILES = {
    "badVR.dcm": "(0028,0008) (IS) is not a number",
    "nested_priv_SQ.dcm": "(0001,0001) at byte",
}


@pytest.mark.parametrize("implicit", [False, True])
def test_data_sets_are_read_as_pydicom_reads_them(implicit: bool) -> None:
    """The one-pass reader of data sets gives pydicom's raw elements and encoding, for every
    little endian file pydicom ships, as received in either syntax; sequences of undefined
    length (which pydicom reads into a ``Sequence`` at once) convert to the same items."""
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    taken = 0
    for name in LITTLE_ENDIAN_FILES:
        path = get_testdata_file(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                data = _reencoded(dcmread(path), implicit=implicit)
            except Exception:
                continue  # a file pydicom itself cannot write back
            expected = _pydicom_read(data, implicit)
        if name in REFUSED_FILES:
            with pytest.raises(InvalidInstanceError, match=re.escape(REFUSED_FILES[name])):
                read_dataset_checked(data, _meta_end(data), syntax)
            continue
        ours, _ = read_dataset_checked(data, _meta_end(data), syntax)
        taken += 1
        assert list(ours._dict) == list(expected._dict), path
        sequences = []
        for tag, element in expected._dict.items():
            if isinstance(element, RawDataElement):
                assert ours._dict[tag] == element, (path, tag)
            else:  # a sequence of undefined length
                assert ours._dict[tag].length == 0xFFFFFFFF, (path, tag)
                sequences.append(tag)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for tag in sequences:
                assert ours[tag].value == expected[tag].value, (path, tag)
        assert ours.original_encoding == expected.original_encoding, path
        assert ours.original_character_set == expected.original_character_set, path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for keyword in KEYWORDS:
                assert IndexValues(ours).get(keyword) == expected.get(keyword), keyword
    assert taken >= 18


@pytest.mark.parametrize("implicit", [False, True])
def test_plain_data_sets_cut_anywhere_are_refused(implicit: bool) -> None:
    data = _reencoded(dcmread(get_testdata_file("CT_small.dcm")), implicit=implicit)
    start = _meta_end(data)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    assert read_dataset_checked(data, start, syntax)[0]
    # in the middle of a header, of a value, of the pixel data, 3 bytes after an element
    for cut in (start + 5, start + 60, len(data) - 1, len(data) - 1000, start + 3):
        with pytest.raises(InvalidInstanceError, match="truncated"):
            parse_received(data[:cut], start, syntax, "")
    trailing = data + b"\x00\x00\x00"
    with pytest.raises(InvalidInstanceError, match="truncated"):
        parse_received(trailing, start, syntax, "")


def test_received_data_set_refused_as_its_file_would_be(tmp_path: Path) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    data = _reencoded(dcmread(io.BytesIO(data)), implicit=False)
    offset = _meta_end(data)
    syntax = "1.2.840.10008.1.2.1"
    with pytest.raises(InvalidInstanceError, match="truncated"):
        parse_received(data[: len(data) - 100], offset, syntax, "")
    with pytest.raises(InvalidInstanceError, match="differs from SOP Instance UID"):
        parse_received(data, offset, syntax, "1.2.3.999")
    with pytest.raises(InvalidInstanceError, match="unknown transfer syntax"):
        parse_received(data, offset, "1.2.3", "")

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Rows * 2
    short = _reencoded(ds, implicit=False)
    with pytest.raises(InvalidInstanceError, match="Pixel Data has"):
        parse_received(short, _meta_end(short), syntax, "")

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = b""
    empty = _reencoded(ds, implicit=False)
    with pytest.raises(InvalidInstanceError, match="Pixel Data is empty"):
        parse_received(empty, _meta_end(empty), syntax, "")
    with pytest.raises(InvalidInstanceError, match="Pixel Data is empty"):
        parse_part10(empty)


def test_values_that_break_their_vr_rules_are_not_quoted_in_logs(
    caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
) -> None:
    # pydicom's checks on reading warn and log the offending value (a name, an ID, a date):
    # Qamqor reads without them and stores what the modality sent.
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientSex = "secret-sex"  # CS: capitals, digits, space and underscore only
    ds.PatientAge = "secret-age"  # AS: nnnD, nnnW, nnnM or nnnY
    ds.StudyID = "secret-id-longer-than-16"  # SH: 16 characters at most
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    caplog.set_level("DEBUG")
    parsed = parse_part10(buffer.getvalue())
    values = [parsed.values.text(k, 64) for k in ("PatientSex", "PatientAge", "StudyID")]
    assert values == ["secret-sex", "secret-age", "secret-id-longer-than-16"]
    assert "secret" not in caplog.text
    assert not [w for w in recwarn if "secret" in str(w.message)]
