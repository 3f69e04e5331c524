"""The studies page: what the archive holds, searched and paged, and audited."""

from __future__ import annotations

import io
import re
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from qamqor.core.auth import create_user
from qamqor.core.models import AuditEvent
from qamqor.pacs.parsing import parse_part10
from qamqor.runtime import Runtime
from qamqor.web.app import create_app

PASSWORD = "correct horse battery"


class StudiesTable(HTMLParser):
    """Reads the studies table back: one dict per study, cells keyed by their column."""

    def __init__(self) -> None:
        super().__init__()
        self.studies: list[dict[str, Any]] = []
        self._cell: str | None = None
        self._in_study_row = False
        self._next_link = ""
        self.links: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tbody" and a.get("class") == "study":
            self.studies.append({"uid": a["data-study-uid"], "series": []})
        elif tag == "tr":
            self._in_study_row = a.get("class") == "study-row"
            if a.get("data-series-uid"):
                self.studies[-1]["series"].append(a["data-series-uid"])
        elif tag in ("td", "th") and self._in_study_row and a.get("data-label"):
            self._cell = str(a["data-label"])
            self.studies[-1][self._cell] = ""
        elif tag == "a" and a.get("rel") in ("next", "prev"):
            self.links[str(a["rel"])] = str(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._cell = None
        if tag == "tr":
            self._in_study_row = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self.studies[-1][self._cell] = (self.studies[-1][self._cell] + data).strip()


def read_page(html: str) -> StudiesTable:
    table = StudiesTable()
    table.feed(html)
    return table


def store(runtime: Runtime, data: bytes) -> None:
    runtime.archive.store_instance(parse_part10(data), source="test")


def synthetic_study(
    name: str, patient_id: str, accession: str, study_date: str, birth_date: str = ""
) -> bytes:
    """A real CT instance (pydicom's CT_small) given a new study, patient and date."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.AccessionNumber = accession
    ds.StudyDate = study_date
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def client_for(runtime: Runtime, role: str = "radiologist") -> TestClient:
    with runtime.session_factory() as session:
        create_user(session, username="asel", password=PASSWORD, role=role)
        session.commit()
    client = TestClient(create_app(runtime))
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    client.post(
        "/login",
        data={"username": "asel", "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    # Column labels in English, to read the table back by name.
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/studies").text)
    assert token
    client.post("/language", data={"lang": "en", "csrf_token": token.group(1)})
    return client


def test_studies_page_lists_stored_studies_with_patients_and_series(
    runtime: Runtime, shared_dicom_dir: Path
) -> None:
    files = [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")]
    files += sorted(shared_dicom_dir.glob("*.dcm"))
    expected: dict[str, dict[str, Any]] = {}
    series_of: dict[str, set[str]] = defaultdict(set)
    instances_of: dict[str, set[str]] = defaultdict(set)
    for path in files:
        store(runtime, path.read_bytes())
        ds = dcmread(path, stop_before_pixels=True)
        study_uid = str(ds.StudyInstanceUID)
        series_of[study_uid].add(str(ds.SeriesInstanceUID))
        instances_of[study_uid].add(str(ds.SOPInstanceUID))
        expected.setdefault(study_uid, {"first": ds})  # the first file names the patient

    page = client_for(runtime).get("/studies")
    assert page.status_code == 200
    shown = {study["uid"]: study for study in read_page(page.text).studies}
    assert set(shown) == set(expected)
    for uid, study in shown.items():
        ds = expected[uid]["first"]
        assert study["Patient"] == " ".join(str(ds.PatientName).split("^"))
        assert study["Patient ID"] == ds.PatientID
        assert study["Series"] == str(len(series_of[uid]))
        assert study["Instances"] == str(len(instances_of[uid]))
        assert set(study["series"]) == series_of[uid]  # the expandable series list

    # One study read field by field: a chest CR with a birth date and an accession number.
    rle = dcmread(shared_dicom_dir / "RG3_RLE.dcm", stop_before_pixels=True)
    row = shown[str(rle.StudyInstanceUID)]
    assert row["Patient"] == "CompressedSamples RG3"
    assert row["Birth date"] == "1979-04-08"
    assert row["Study date"].startswith("2003-12-08")
    assert row["Description"] == str(rle.StudyDescription)
    assert row["Accession number"] == str(rle.AccessionNumber)
    assert row["Modalities"] == "CR"
    assert "1 series" in page.text


@pytest.fixture
def population(runtime: Runtime) -> dict[str, str]:
    """Five patients' studies; returns study UID by accession number."""
    people = [
        ("IVANOV^IVAN", "IIN900101300001", "ACC1001", "20240105", "19900101"),
        ("PETROVA^ANNA^SERGEEVNA", "IIN850202400002", "ACC2002", "20240210", "19850202"),
        ("ABAYULY^ASKAR", "IIN770303300003", "ACC3003", "20240315", ""),
        ("IVANOVA^MARIA", "IIN010404400004", "ACC4004", "20240420", ""),
        ("NURLANQYZY^DANA", "IIN990505400005", "ACC5005", "20240525", ""),
    ]
    uids = {}
    for name, pid, accession, date, birth in people:
        data = synthetic_study(name, pid, accession, date, birth)
        uids[accession] = str(dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID)
        store(runtime, data)
    return uids


def shown_accessions(client: TestClient, **params: str) -> list[str]:
    response = client.get("/studies", params=params)
    assert response.status_code == 200
    return [study["Accession number"] for study in read_page(response.text).studies]


def test_search_by_name_id_accession_and_dates(
    runtime: Runtime, population: dict[str, str]
) -> None:
    client = client_for(runtime)
    newest_first = ["ACC5005", "ACC4004", "ACC3003", "ACC2002", "ACC1001"]
    assert shown_accessions(client) == newest_first
    # Names: any case, any part, parts in order.
    assert shown_accessions(client, name="ivanov") == ["ACC4004", "ACC1001"]
    assert shown_accessions(client, name="Ivanov Ivan") == ["ACC1001"]
    assert shown_accessions(client, name="petrova anna") == ["ACC2002"]
    assert shown_accessions(client, name="sergeevna") == ["ACC2002"]
    assert shown_accessions(client, name="smith") == []
    # IDs and accession numbers: from their start.
    assert shown_accessions(client, patient_id="IIN8502") == ["ACC2002"]
    assert shown_accessions(client, patient_id="8502") == []
    assert shown_accessions(client, accession="ACC3003") == ["ACC3003"]
    # Dates: inclusive ranges, open at either end, given in either order.
    assert shown_accessions(client, date_from="2024-02-10", date_to="2024-04-20") == [
        "ACC4004",
        "ACC3003",
        "ACC2002",
    ]
    assert shown_accessions(client, date_from="2024-04-01") == ["ACC5005", "ACC4004"]
    assert shown_accessions(client, date_to="2024-01-31") == ["ACC1001"]
    assert shown_accessions(client, date_from="2024-04-20", date_to="2024-02-10") == [
        "ACC4004",
        "ACC3003",
        "ACC2002",
    ]
    # Fields combine.
    assert shown_accessions(client, name="ivanov", date_from="2024-03-01") == ["ACC4004"]
    # The form shows what was searched for.
    page = client.get("/studies", params={"name": "ivanov", "date_from": "2024-03-01"})
    assert 'name="name" type="search" value="ivanov"' in page.text
    assert 'value="2024-03-01"' in page.text
    assert "No studies match your search." in client.get("/studies?name=smith").text

    # A malformed date is explained, and the page still works.
    bad = client.get("/studies", params={"date_from": "2024-13-45"})
    assert bad.status_code == 200
    assert "Dates are written as YYYY-MM-DD." in bad.text
    assert read_page(bad.text).studies == []
    # Wildcards in the name are the user's own: no SQL LIKE characters leak through.
    assert shown_accessions(client, name="IVANOV%") == []
    assert shown_accessions(client, name="IVANOV*") == ["ACC4004", "ACC1001"]


def test_paging_walks_through_every_study_once(
    runtime: Runtime, population: dict[str, str]
) -> None:
    client = client_for(runtime)
    seen: list[str] = []
    url = "/studies?size=2"
    pages = 0
    previous_link = None
    while url:
        response = client.get(url)
        table = read_page(response.text)
        assert 1 <= len(table.studies) <= 2
        seen += [study["Accession number"] for study in table.studies]
        pages += 1
        if pages > 1:
            assert "prev" in table.links
        else:
            assert "prev" not in table.links
        previous_link = table.links.get("prev")
        url = table.links.get("next", "")
    assert pages == 3
    assert previous_link is not None and "page=2" in previous_link
    assert seen == ["ACC5005", "ACC4004", "ACC3003", "ACC2002", "ACC1001"]

    # Paging keeps the search.
    first = read_page(client.get("/studies", params={"name": "iv", "size": "1"}).text)
    next_query = parse_qs(urlsplit(first.links["next"]).query)
    assert next_query == {"name": ["iv"], "size": ["1"], "page": ["2"]}
    second = read_page(client.get(first.links["next"]).text)
    assert [s["Accession number"] for s in first.studies + second.studies] == [
        "ACC4004",
        "ACC1001",
    ]
    assert "next" not in second.links
    # Past the end: an empty page, not an error; nonsense numbers fall back to the defaults.
    assert shown_accessions(client, page="99") == []
    assert shown_accessions(client, page="abc", size="x")[:1] == ["ACC5005"]
    assert len(shown_accessions(client, page="-3", size="1")) == 1


def test_each_page_view_is_audited_without_patient_data(
    runtime: Runtime, population: dict[str, str]
) -> None:
    client = client_for(runtime)
    with runtime.session_factory() as session:
        before = session.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1))
    response = client.get("/studies", params={"name": "ivanov"})
    assert response.status_code == 200
    with runtime.session_factory() as session:
        rows = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.id > before).order_by(AuditEvent.id)
            )
        )
    page_views = [r for r in rows if r.action == "view_page"]
    assert [(r.actor, r.object_type, r.object_id) for r in page_views] == [
        ("asel", "page", "/studies")
    ]
    viewed = {r.object_id for r in rows if r.action == "view" and r.object_type == "study"}
    assert viewed == {population["ACC1001"], population["ACC4004"]}
    assert all(r.actor == "asel" and r.source.startswith("web:") for r in rows)
    # Who saw which study is recorded by UID; names, IDs and search terms are not.
    for row in rows:
        flat = " ".join(str(value) for value in vars(row).values()).upper()
        for secret in ("IVANOV", "IIN9001", "ACC1001", "19900101"):
            assert secret not in flat


def test_empty_archive_says_so(runtime: Runtime) -> None:
    page = client_for(runtime, role="technologist").get("/studies")
    assert page.status_code == 200
    assert "The archive has no studies yet." in page.text
