"""DICOMweb driven by the dicomweb-client library against a live server (SQLite and PostgreSQL).

The real files of ../shared/data/dicom (JPEG 2000, JPEG lossless, JPEG-LS, RLE) go in by
STOW-RS and come back by WADO-RS: as stored byte for byte, decompressed to Explicit VR Little
Endian with the pixels pydicom decodes from the original, as frames, metadata and rendered
images.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from PIL import Image
from pydicom.encaps import get_frame
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian
from sqlalchemy import select

from qamqor.core.auth import create_token, create_user
from qamqor.core.models import AuditEvent
from qamqor.runtime import Runtime
from tests.conftest import LiveServer

CT_J2K = "CT1_J2KI.dcm"
CT_JPLL = "CT1_JPLL.dcm"
CR_JLS = "RG1_JLSN.dcm"
CR_RLE = "RG3_RLE.dcm"
CR_J2K_MONO1 = "RG1_J2KI.dcm"


# Fixtures -----------------------------------------------------------------------------------
class Captured:
    """The last raw HTTP response the client received (to check bytes on the wire)."""

    response: requests.Response | None = None

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.response = response


@pytest.fixture
def captured() -> Captured:
    return Captured()


@pytest.fixture
def client(
    live_server: LiveServer, admin_credentials: tuple[str, str], captured: Captured
) -> DICOMwebClient:
    session = create_session_from_user_pass(*admin_credentials)
    return DICOMwebClient(url=f"{live_server.url}/dicom-web", session=session, callback=captured)


@pytest.fixture
def files(shared_dicom_dir: Path) -> dict[str, Path]:
    return {path.name: path for path in sorted(shared_dicom_dir.glob("*.dcm"))}


@pytest.fixture
def stored(client: DICOMwebClient, files: dict[str, Path]) -> dict[str, pydicom.Dataset]:
    """Every real file stored through STOW-RS; their headers by file name."""
    datasets = [pydicom.dcmread(path) for path in files.values()]
    response = client.store_instances(datasets)
    assert "FailedSOPSequence" not in response
    stored_uids = {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence}
    assert stored_uids == {ds.SOPInstanceUID for ds in datasets}
    return {name: pydicom.dcmread(path, stop_before_pixels=True) for name, path in files.items()}


def _parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, payload) of each part of a multipart/related body, parsed by hand."""
    media_type, _, params = response.headers["Content-Type"].partition(";")
    assert media_type.strip() == "multipart/related"
    boundary = next(
        p.split("=", 1)[1].strip().strip('"')
        for p in params.split(";")
        if p.strip().startswith("boundary=")
    ).encode()
    parts = []
    for chunk in response.content.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().strip().split("\r\n") if ": " in line
        )
        parts.append((headers["Content-Type"], body.removesuffix(b"\r\n")))
    return parts


def _uids(ds: pydicom.Dataset) -> tuple[str, str, str]:
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def _value(result: dict[str, Any], keyword: str) -> Any:
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    values = result.get(tag, {}).get("Value")
    return values[0] if values else None


# STOW-RS and WADO-RS instances ------------------------------------------------------------
def test_instances_come_back_as_stored_byte_for_byte(
    client: DICOMwebClient,
    captured: Captured,
    files: dict[str, Path],
    stored: dict[str, pydicom.Dataset],
) -> None:
    for name, header in stored.items():
        original = files[name].read_bytes()
        instance = client.retrieve_instance(
            *_uids(header), media_types=(("application/dicom", "*"),)
        )
        assert instance.SOPInstanceUID == header.SOPInstanceUID
        assert captured.response is not None
        ((content_type, payload),) = _parts(captured.response)
        assert payload == original, name
        assert f"transfer-syntax={header.file_meta.TransferSyntaxUID}" in content_type


def test_default_retrieve_is_explicit_little_endian_with_the_original_pixels(
    client: DICOMwebClient, files: dict[str, Path], stored: dict[str, pydicom.Dataset]
) -> None:
    for name in (CT_J2K, CT_JPLL, CR_JLS, CR_RLE):
        header = stored[name]
        instance = client.retrieve_instance(*_uids(header), media_types=("application/dicom",))
        assert instance.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert instance.SOPInstanceUID == header.SOPInstanceUID
        expected = pydicom.dcmread(files[name]).pixel_array
        np.testing.assert_array_equal(instance.pixel_array, expected)

    # Asking explicitly for the stored syntax gives the file as stored; another one is refused.
    header = stored[CT_J2K]
    same = client.retrieve_instance(
        *_uids(header),
        media_types=(("application/dicom", str(header.file_meta.TransferSyntaxUID)),),
    )
    assert same.file_meta.TransferSyntaxUID == header.file_meta.TransferSyntaxUID
    with pytest.raises(requests.HTTPError) as refused:
        client.retrieve_instance(
            *_uids(header), media_types=(("application/dicom", "1.2.840.10008.1.2.4.50"),)
        )
    assert refused.value.response.status_code == 406
    assert "transfer-syntax=*" in refused.value.response.json()["detail"]


def test_study_and_series_retrieve_stream_every_instance(
    client: DICOMwebClient, files: dict[str, Path], stored: dict[str, pydicom.Dataset]
) -> None:
    ct = stored[CT_J2K]  # CT1_J2KI and CT1_JPLL: one study, one series, two instances
    study = client.retrieve_study(ct.StudyInstanceUID, media_types=(("application/dicom", "*"),))
    assert {ds.SOPInstanceUID for ds in study} == {
        stored[CT_J2K].SOPInstanceUID,
        stored[CT_JPLL].SOPInstanceUID,
    }
    series = client.retrieve_series(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, media_types=("application/dicom",)
    )
    assert len(series) == 2
    assert all(ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian for ds in series)
    with pytest.raises(requests.HTTPError) as missing:
        client.retrieve_study("1.2.3.4.5.6.7.8.9")
    assert missing.value.response.status_code == 404
    assert "1.2.3.4.5.6.7.8.9" in missing.value.response.json()["detail"]


# QIDO-RS -----------------------------------------------------------------------------------
def test_search_matches_filters_and_pages(
    client: DICOMwebClient, live_server: LiveServer, stored: dict[str, pydicom.Dataset]
) -> None:
    studies = client.search_for_studies()
    assert len(studies) == 5
    by_uid = {_value(s, "StudyInstanceUID"): s for s in studies}
    ct = stored[CT_J2K]
    ct_study = by_uid[ct.StudyInstanceUID]
    # dicomweb-client sends Host without the port; the URL still has it.
    assert _value(ct_study, "RetrieveURL") == (
        f"{live_server.url}/dicom-web/studies/{ct.StudyInstanceUID}"
    )
    assert _value(ct_study, "NumberOfStudyRelatedInstances") == 2
    assert _value(ct_study, "ModalitiesInStudy") == "CT"
    assert _value(ct_study, "PatientName") == {"Alphabetic": str(ct.PatientName)}
    # Study Description is not a default return attribute; includefield brings it.
    assert "00081030" not in ct_study

    def uids(results: list[dict[str, Any]]) -> set[str]:
        return {_value(r, "StudyInstanceUID") for r in results}

    assert uids(client.search_for_studies(search_filters={"PatientName": "compressedsamples^ct*"}))
    assert uids(
        client.search_for_studies(search_filters={"PatientName": "COMPRESSEDSAMPLES^CT*"})
    ) == {ct.StudyInstanceUID}
    assert uids(client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"})) == {
        ct.StudyInstanceUID
    }
    assert uids(client.search_for_studies(search_filters={"00100020": "11RG3"})) == {
        stored[CR_RLE].StudyInstanceUID
    }
    assert len(client.search_for_studies(search_filters={"StudyDate": "20040101-20041231"})) == 4
    assert uids(client.search_for_studies(search_filters={"StudyDate": "20031208"})) == {
        stored[CR_RLE].StudyInstanceUID
    }
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []

    # Paging: limit and offset walk through all five without repeating one.
    pages = [client.search_for_studies(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert set().union(*(uids(p) for p in pages)) == set(by_uid)
    assert len(client.search_for_studies(limit=2, get_remaining=True)) == 5

    (with_fields,) = client.search_for_studies(
        fields=["StudyDescription", "00080020"],
        search_filters={"StudyInstanceUID": ct.StudyInstanceUID},
    )
    assert "00081030" in with_fields
    everything = client.search_for_studies(
        fields=["all"], search_filters={"StudyInstanceUID": ct.StudyInstanceUID}
    )
    assert "00080080" in everything[0]  # Institution Name: only with includefield=all

    # Series: of one study, and across studies with a study-level and a series-level key.
    (series,) = client.search_for_series(ct.StudyInstanceUID)
    assert _value(series, "SeriesInstanceUID") == ct.SeriesInstanceUID
    assert _value(series, "Modality") == "CT"
    assert _value(series, "NumberOfSeriesRelatedInstances") == 2
    assert _value(series, "RetrieveURL").endswith(
        f"/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
    )
    cr_series = client.search_for_series(search_filters={"Modality": "CR"})
    assert {_value(s, "SeriesInstanceUID") for s in cr_series} == {
        stored[name].SeriesInstanceUID for name in (CR_JLS, CR_RLE, "RG2_J2KI.dcm")
    }
    assert all(_value(s, "PatientID") for s in cr_series)  # study attributes come along

    # Instances: of a series, of a study, and everywhere.
    instances = client.search_for_instances(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert {_value(i, "SOPInstanceUID") for i in instances} == {
        stored[CT_J2K].SOPInstanceUID,
        stored[CT_JPLL].SOPInstanceUID,
    }
    assert all(_value(i, "Rows") == 512 and _value(i, "Columns") == 512 for i in instances)
    assert all(_value(i, "RetrieveURL").endswith(_value(i, "SOPInstanceUID")) for i in instances)
    assert len(client.search_for_instances(ct.StudyInstanceUID)) == 2
    everywhere = client.search_for_instances(search_filters={"SOPClassUID": ct.SOPClassUID})
    assert len(everywhere) == 2
    assert len(client.search_for_instances()) == 7


def test_bad_search_parameters_get_400_with_a_reason(
    client: DICOMwebClient, live_server: LiveServer, stored: dict[str, pydicom.Dataset]
) -> None:
    for params, reason in [
        ({"StudyDate": "last tuesday"}, "dates are YYYYMMDD"),
        ({"NoSuchAttribute": "x"}, "unknown attribute"),
        ({"SOPInstanceUID": "1.2.3"}, "cannot filter a study-level query"),
        ({"NumberOfStudyRelatedInstances": "many"}, "must be a number"),
    ]:
        with pytest.raises(requests.HTTPError) as error:
            client.search_for_studies(search_filters=params)
        assert error.value.response.status_code == 400
        assert reason in error.value.response.json()["detail"]
    session = create_session_from_user_pass("admin", "admin-password")
    answer = session.get(f"{live_server.url}/dicom-web/studies", params={"limit": "-1"})
    assert answer.status_code == 400
    assert "limit" in answer.json()["detail"]


# WADO-RS metadata, frames, rendered -----------------------------------------------------------
def test_metadata_has_headers_and_bulk_data_uris(
    client: DICOMwebClient, files: dict[str, Path], stored: dict[str, pydicom.Dataset]
) -> None:
    header = stored[CR_RLE]
    metadata = client.retrieve_instance_metadata(*_uids(header))
    assert _value(metadata, "SOPInstanceUID") == header.SOPInstanceUID
    assert _value(metadata, "Rows") == header.Rows
    assert _value(metadata, "PhotometricInterpretation") == "MONOCHROME1"
    assert _value(metadata, "AvailableTransferSyntaxUID") == str(header.file_meta.TransferSyntaxUID)
    pixel = metadata["7FE00010"]
    assert "InlineBinary" not in pixel
    assert "Value" not in pixel
    assert not any(k.startswith("0002") for k in metadata)  # no file meta in metadata
    # The BulkDataURI serves the pixel data: here, the one frame decoded.
    (frame,) = client.retrieve_bulkdata(pixel["BulkDataURI"])
    expected = pydicom.dcmread(files[CR_RLE]).pixel_array
    assert frame == expected.astype("<u2").tobytes()

    ct = stored[CT_J2K]
    series = client.retrieve_series_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert {_value(m, "SOPInstanceUID") for m in series} == {
        stored[CT_J2K].SOPInstanceUID,
        stored[CT_JPLL].SOPInstanceUID,
    }
    study = client.retrieve_study_metadata(ct.StudyInstanceUID)
    assert len(study) == 2
    assert all(pydicom.Dataset.from_json(m).StudyInstanceUID == ct.StudyInstanceUID for m in study)
    with pytest.raises(requests.HTTPError) as missing:
        client.retrieve_series_metadata(ct.StudyInstanceUID, "1.2.3")
    assert missing.value.response.status_code == 404

    # Asked again (now from the cache kept beside the file), the answer is the same, and its
    # URLs follow the address the viewer used, not the one of the first request.
    again = client.retrieve_instance_metadata(*_uids(header))
    assert again == metadata
    other_host = client._session.get(  # the same server under another name
        pixel["BulkDataURI"].rsplit("/bulkdata/", 1)[0].replace("127.0.0.1", "localhost")
        + "/metadata",
        headers={"Accept": "application/dicom+json"},
    )
    assert other_host.status_code == 200
    assert other_host.json()[0]["7FE00010"]["BulkDataURI"].startswith("http://localhost:")


def test_frames_uncompressed_and_as_stored(
    client: DICOMwebClient,
    captured: Captured,
    files: dict[str, Path],
    stored: dict[str, pydicom.Dataset],
) -> None:
    header = stored[CT_J2K]
    original = pydicom.dcmread(files[CT_J2K])

    # Default: uncompressed little-endian bytes of the decoded frame.
    (raw,) = client.retrieve_instance_frames(*_uids(header), frame_numbers=[1])
    assert (
        raw
        == original.pixel_array.astype("<i2" if original.PixelRepresentation else "<u2").tobytes()
    )
    (octet,) = client.retrieve_instance_frames(
        *_uids(header), frame_numbers=[1], media_types=("application/octet-stream",)
    )
    assert octet == raw

    # As stored: the JPEG 2000 codestream, for image/jp2 and for what OHIF asks
    # (application/octet-stream with transfer-syntax=*).
    codestream = get_frame(original.PixelData, 0, number_of_frames=1)
    (jp2,) = client.retrieve_instance_frames(
        *_uids(header), frame_numbers=[1], media_types=(("image/jp2", str(JPEG2000)),)
    )
    assert jp2 == codestream
    assert captured.response is not None
    ((part_type, _),) = _parts(captured.response)
    assert part_type == f"image/jp2; transfer-syntax={JPEG2000}"
    (ohif,) = client.retrieve_instance_frames(
        *_uids(header), frame_numbers=[1], media_types=(("application/octet-stream", "*"),)
    )
    assert ohif == codestream
    ((part_type, _),) = _parts(captured.response)
    assert f"transfer-syntax={JPEG2000}" in part_type

    # JPEG-LS stored, JPEG 2000 asked: nothing acceptable.
    with pytest.raises(requests.HTTPError) as refused:
        client.retrieve_instance_frames(
            *_uids(stored[CR_JLS]), frame_numbers=[1], media_types=(("image/jp2", str(JPEG2000)),)
        )
    assert refused.value.response.status_code == 406
    with pytest.raises(requests.HTTPError) as missing:
        client.retrieve_instance_frames(*_uids(header), frame_numbers=[2])
    assert missing.value.response.status_code == 404
    assert "frame 2 does not exist" in missing.value.response.json()["detail"]


def test_rendered_png_and_jpeg_with_window_and_viewport(
    client: DICOMwebClient, live_server: LiveServer, stored: dict[str, pydicom.Dataset]
) -> None:
    header = stored[CR_J2K_MONO1]
    png = client.retrieve_instance_rendered(*_uids(header), media_types=("image/png",))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == (header.Columns, header.Rows)
    assert image.mode == "L"

    jpeg = client.retrieve_instance_rendered(*_uids(header), media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    small = client.retrieve_instance_rendered(
        *_uids(header), media_types=("image/png",), params={"viewport": "256,256"}
    )
    assert max(Image.open(io.BytesIO(small)).size) == 256

    # A narrow window at the bottom of the range turns nearly everything white-on-black
    # differently from the header's window: the request's window is what is used.
    narrow = client.retrieve_instance_rendered(
        *_uids(header), media_types=("image/png",), params={"window": "100,10"}
    )
    assert np.asarray(Image.open(io.BytesIO(narrow))).mean() < 10  # MONOCHROME1: high = dark
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(narrow))), np.asarray(image))

    frame = client.retrieve_instance_frames_rendered(
        *_uids(stored[CT_J2K]), frame_numbers=[1], media_types=("image/png",)
    )
    assert Image.open(io.BytesIO(frame)).size == (512, 512)

    session = create_session_from_user_pass("admin", "admin-password")
    base = f"{live_server.url}/dicom-web/studies/{header.StudyInstanceUID}"
    thumbnail = session.get(f"{base}/thumbnail", headers={"Accept": "image/jpeg"})
    assert thumbnail.status_code == 200
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) == 128
    bad_window = session.get(
        f"{base}/series/{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}/rendered",
        params={"window": "100"},
    )
    assert bad_window.status_code == 400
    gif = session.get(
        f"{base}/series/{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}/rendered",
        headers={"Accept": "image/gif"},
    )
    assert gif.status_code == 406


# STOW-RS refusals -------------------------------------------------------------------------
def _multipart(parts: list[bytes], boundary: str = "test-boundary-1234") -> tuple[bytes, str]:
    body = b"".join(
        b"\r\n--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
        for p in parts
    )
    body += b"\r\n--" + boundary.encode() + b"--"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _count(runtime: Runtime) -> int:
    return runtime.archive.count()["instances"]


def test_stow_refuses_bad_parts_with_reasons_and_stores_nothing_of_them(
    client: DICOMwebClient,
    live_server: LiveServer,
    runtime: Runtime,
    files: dict[str, Path],
) -> None:
    session = create_session_from_user_pass("admin", "admin-password")
    url = f"{live_server.url}/dicom-web/studies"
    good = files[CT_J2K].read_bytes()
    garbage = b"this is not DICOM, just text that came in by mistake" * 20
    truncated = files[CR_RLE].read_bytes()[:100_000]

    body, content_type = _multipart([garbage, truncated])
    answer = session.post(url, data=body, headers={"Content-Type": content_type})
    assert answer.status_code == 409
    assert answer.headers["Content-Type"] == "application/dicom+json"
    failed = pydicom.Dataset.from_json(answer.json()).FailedSOPSequence
    assert [item.FailureReason for item in failed] == [0xC000, 0xC000]
    reasons = [item[0x00000902].value for item in failed]
    assert "not a DICOM file" in reasons[0]
    assert "truncated" in reasons[1]
    assert _count(runtime) == 0
    assert "Warning" in answer.headers

    # Missing UIDs, sent through dicomweb-client itself.
    no_uid = pydicom.dcmread(files[CT_J2K])
    del no_uid.SOPInstanceUID
    no_uid.file_meta.MediaStorageSOPInstanceUID = ""
    with pytest.raises(requests.HTTPError) as error:
        client.store_instances([no_uid])
    assert error.value.response.status_code == 409
    (item,) = pydicom.Dataset.from_json(error.value.response.json()).FailedSOPSequence
    assert item.FailureReason == 0xA900
    assert "SOPInstanceUID is missing" in item[0x00000902].value
    assert _count(runtime) == 0

    # One good, one bad: 202, the good one stored with its RetrieveURL, the bad one listed.
    body, content_type = _multipart([good, garbage])
    answer = session.post(url, data=body, headers={"Content-Type": content_type})
    assert answer.status_code == 202
    result = pydicom.Dataset.from_json(answer.json())
    (ok,) = result.ReferencedSOPSequence
    header = pydicom.dcmread(files[CT_J2K], stop_before_pixels=True)
    assert ok.ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert ok.RetrieveURL.endswith(f"/instances/{header.SOPInstanceUID}")
    assert len(result.FailedSOPSequence) == 1
    assert _count(runtime) == 1

    # A part of another study than the URL's: refused, not stored.
    other = pydicom.dcmread(files[CR_RLE])
    with pytest.raises(requests.HTTPError) as error:
        client.store_instances([other], study_instance_uid=header.StudyInstanceUID)
    assert error.value.response.status_code == 409
    (item,) = pydicom.Dataset.from_json(error.value.response.json()).FailedSOPSequence
    assert item.ReferencedSOPInstanceUID == other.SOPInstanceUID
    assert "belongs to study" in item[0x00000902].value
    assert _count(runtime) == 1

    # A body cut off in the middle of its second part: the first is stored, the cut is reported.
    body, content_type = _multipart([files[CR_RLE].read_bytes(), good])
    answer = session.post(
        url, data=body[: len(body) - 5000], headers={"Content-Type": content_type}
    )
    assert answer.status_code == 202
    result = pydicom.Dataset.from_json(answer.json())
    assert len(result.ReferencedSOPSequence) == 1
    assert "ends in the middle of a part" in result.FailedSOPSequence[0][0x00000902].value
    assert _count(runtime) == 2

    # Not multipart/related at all.
    answer = session.post(url, data=good, headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 415
    # The server kept serving throughout.
    assert len(client.search_for_studies()) == 2


# Access control, audit, CORS --------------------------------------------------------------
def test_access_needs_credentials_and_an_imaging_role(
    live_server: LiveServer, runtime: Runtime, admin_credentials: tuple[str, str]
) -> None:
    url = f"{live_server.url}/dicom-web"
    anonymous = requests.get(f"{url}/studies")
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.post(f"{url}/studies", data=b"x").status_code == 401

    wrong = DICOMwebClient(url=url, session=create_session_from_user_pass("admin", "wrong-pass"))
    with pytest.raises(requests.HTTPError) as error:
        wrong.search_for_studies()
    assert error.value.response.status_code == 401

    with runtime.session_factory() as session:
        create_user(session, username="clerk", password="clerk-password", role="registrar")
        radiologist = create_user(
            session, username="dr-a", password="doctor-password", role="radiologist"
        )
        token = create_token(session, user=radiologist, name="viewer")
        session.commit()
    clerk = DICOMwebClient(
        url=url, session=create_session_from_user_pass("clerk", "clerk-password")
    )
    with pytest.raises(requests.HTTPError) as error:
        clerk.search_for_studies()
    assert error.value.response.status_code == 403

    bearer = requests.Session()
    bearer.headers["Authorization"] = f"Bearer {token}"
    assert DICOMwebClient(url=url, session=bearer).search_for_studies() == []
    bearer.headers["Authorization"] = "Bearer qmq_not-a-real-token"
    with pytest.raises(requests.HTTPError) as error:
        DICOMwebClient(url=url, session=bearer).search_for_studies()
    assert error.value.response.status_code == 401


def test_reads_are_audited_without_patient_data(
    client: DICOMwebClient, runtime: Runtime, stored: dict[str, pydicom.Dataset]
) -> None:
    header = stored[CT_J2K]
    client.search_for_studies(search_filters={"PatientName": "CompressedSamples*"})
    client.retrieve_instance_metadata(*_uids(header))
    client.retrieve_instance(*_uids(header), media_types=(("application/dicom", "*"),))
    client.retrieve_instance_frames(*_uids(header), frame_numbers=[1])
    client.retrieve_instance_rendered(*_uids(header), media_types=("image/png",))
    with runtime.session_factory() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    actions = {(e.action, e.object_id) for e in events if e.actor == "admin"}
    assert ("search", "") in actions
    for action in ("retrieve-metadata", "retrieve", "retrieve-frames", "retrieve-rendered"):
        assert (action, header.SOPInstanceUID) in actions
    search = next(e for e in events if e.action == "search")
    assert header.StudyInstanceUID in search.detail
    assert "PatientName" in search.detail  # which keys were used, not their values
    for event in events:
        text = f"{event.object_id} {event.detail} {event.source}"
        assert "CompressedSamples" not in text
        assert str(header.PatientID) not in text.split()
    store = next(e for e in events if e.action == "store")
    assert header.SOPInstanceUID in store.detail


def test_concurrent_reads_are_all_answered_and_audited(
    live_server: LiveServer,
    admin_credentials: tuple[str, str],
    runtime: Runtime,
    stored: dict[str, pydicom.Dataset],
) -> None:
    # A viewer opens a study with many requests at once; each read writes an audit event.
    # On SQLite a read transaction that then writes failed with "database is locked" when
    # another request had committed in between (seen with OHIF): none may fail.
    from concurrent.futures import ThreadPoolExecutor

    header = stored[CT_J2K]
    study, series, instance = _uids(header)
    base = f"{live_server.url}/dicom-web/studies/{study}"
    urls = [
        f"{base}/series",
        f"{base}/series/{series}/metadata",
        f"{base}/series/{series}/instances/{instance}/metadata",
    ] * 20

    def get(url: str) -> int:
        return requests.get(url, auth=admin_credentials, timeout=60).status_code

    before = _audit_count(runtime)
    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = list(pool.map(get, urls))
    assert statuses == [200] * len(urls)
    assert _audit_count(runtime) - before == len(urls)


def _audit_count(runtime: Runtime) -> int:
    from sqlalchemy import func

    with runtime.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def test_cors_preflight_from_an_allowed_origin(runtime: Runtime) -> None:
    origin = "https://viewer.example.org"
    settings = runtime.settings.model_copy(update={"cors_origins": [origin]})
    server = LiveServer(replace(runtime, settings=settings))
    server.start()
    try:
        url = f"{server.url}/dicom-web/studies/1.2.3/series/4.5.6/metadata"
        allowed = requests.options(
            url,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, accept",
            },
        )
        assert allowed.status_code == 200
        assert allowed.headers["Access-Control-Allow-Origin"] == origin
        assert "GET" in allowed.headers["Access-Control-Allow-Methods"]
        assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
        refused = requests.options(
            url,
            headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
        )
        assert "Access-Control-Allow-Origin" not in refused.headers
    finally:
        server.stop()


# Content negotiation (no server needed) -----------------------------------------------------
def test_accept_headers_viewers_send_are_understood() -> None:
    from qamqor.pacs.dicomweb.frames import choose_frame_encoding, choose_instance_syntax
    from qamqor.pacs.dicomweb.multipart import parse_accept

    j2k, rle = str(JPEG2000), "1.2.840.10008.1.2.5"
    # OHIF's frame request: the stored bitstream, labelled with its transfer syntax.
    ohif = parse_accept("multipart/related; type=application/octet-stream; transfer-syntax=*")
    choice = choose_frame_encoding(ohif, j2k)
    assert choice is not None and choice.stored
    assert choice.part_type == f"application/octet-stream; transfer-syntax={j2k}"
    # Preferences by q: uncompressed is preferred here, so the frame is decoded.
    both = parse_accept(
        'multipart/related; type="image/jp2"; q=0.5, '
        'multipart/related; type="application/octet-stream"; q=0.9'
    )
    choice = choose_frame_encoding(both, j2k)
    assert choice is not None and not choice.stored
    # image/x-dicom-rle is an alias of image/dicom-rle.
    choice = choose_frame_encoding(parse_accept('multipart/related; type="image/x-dicom-rle"'), rle)
    assert choice is not None and choice.stored
    assert choose_frame_encoding(parse_accept("image/jp2"), rle) is None

    assert choose_instance_syntax(parse_accept(None), j2k) == str(ExplicitVRLittleEndian)
    star = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*')
    assert choose_instance_syntax(star, j2k) == j2k
    assert choose_instance_syntax(parse_accept("application/dicom+json"), j2k) is None
    refused = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*; q=0')
    assert choose_instance_syntax(refused, j2k) is None
