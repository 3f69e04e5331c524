"""Ids, offsets and numbers are read strictly, and bodies are bounded: a malformed or huge
value is a 4xx that says why, never a 500, and the connection stays open.

``int()`` reads "٣" (an Arabic-Indic three) as 3 and fails on "²" (which ``isdigit()``
accepts); a number past the database's integer fails in the driver; JSON nested 1,000 deep
makes Python's parser raise ``RecursionError``.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from qamqor.core.auth import create_user
from qamqor.pacs.parsing import parse_part10
from qamqor.runtime import Runtime
from qamqor.web.app import create_app
from tests.ai.dicom_factory import chest
from tests.conftest import LiveServer
from tests.registry.region import Region, build_region

AUTH = ("boss", "boss-password")
FHIR = "application/fhir+json"
HUGE = "36893488147419103233"  # 2**65 + 1
DEEP = "[" * 1000 + "]" * 1000


@pytest.fixture
def region(runtime: Runtime) -> Region:
    region = build_region(runtime)
    with runtime.session_factory() as session:
        create_user(session, username=AUTH[0], password=AUTH[1], role="admin")
        session.commit()
    return region


@pytest.fixture
def client(runtime: Runtime, region: Region) -> TestClient:
    return TestClient(create_app(runtime), raise_server_exceptions=False)


def outcome(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith(FHIR), response.text
    return response.json()["issue"][0]


def test_fhir_ids_are_ascii_digits_within_the_database(client: TestClient, region: Region) -> None:
    existing = region.mammography_id
    assert client.get(f"/fhir/Practitioner/{existing}", auth=AUTH).status_code == 200
    arabic = "".join(chr(0x0660 + int(d)) for d in str(existing))  # "٣" for 3
    for value in (arabic, "²", "³", "１", HUGE, "2147483648", "0", "-1", "+1", " 1"):
        for kind in ("Patient", "Practitioner", "Organization", "Schedule", "Slot", "Appointment"):
            response = client.get(f"/fhir/{kind}/{quote(value)}", auth=AUTH)
            assert response.status_code == 404, (kind, value, response.text)
            issue = outcome(response)
            assert issue["code"] == "not-found"
            assert "digits 0-9" in issue["diagnostics"]
    # Search parameters that are not ids: 400 with the rule.
    for query in (
        f"/fhir/Patient?_id={quote('٣')}",
        f"/fhir/Practitioner?_id={HUGE}",
        f"/fhir/Schedule?actor=Practitioner/{quote('²')}",
        f"/fhir/Slot?schedule=Schedule/{HUGE}",
        f"/fhir/Slot?district={quote('²')}",
        f"/fhir/Slot?district={HUGE}",
        f"/fhir/Appointment?patient=Patient/{HUGE}",
    ):
        response = client.get(query, auth=AUTH)
        assert response.status_code == 400, (query, response.text)
        assert outcome(response)["code"] == "invalid"


def test_fhir_references_in_a_booking_are_checked(client: TestClient, region: Region) -> None:
    for slot in ("Slot/²", f"Slot/{HUGE}", "Slot/٣"):
        response = client.post(
            "/fhir/Appointment",
            auth=AUTH,
            headers={"Content-Type": FHIR},
            json={
                "resourceType": "Appointment",
                "status": "booked",
                "slot": [{"reference": slot}],
                "participant": [
                    {"actor": {"reference": f"Patient/{region.man_id}"}, "status": "accepted"}
                ],
            },
        )
        assert response.status_code == 422, (slot, response.text)
        assert "digits 0-9" in outcome(response)["diagnostics"]


def test_numbers_of_the_json_apis_are_strict(client: TestClient, region: Region) -> None:
    for query in (f"offset={HUGE}", "offset=-1", f"offset={quote('٣')}", "limit=%2B5", "limit=5.0"):
        response = client.get(f"/api/ai/studies?{query}", auth=AUTH)
        assert response.status_code == 422, (query, response.text)
        assert response.json()["detail"][0]["loc"][0] == "query"
    assert client.get("/api/ai/studies?offset=0&limit=5", auth=AUTH).status_code == 200
    # The queue API takes a facility's id or its code: what is neither names no facility.
    for facility in (HUGE, quote("٣"), "0", "1_0"):
        response = client.post(f"/api/queue/{facility}/call-next", auth=AUTH, json={"room": "1"})
        assert response.status_code == 404, (facility, response.text)
        assert response.json()["detail"] == "No such facility."


def test_deep_and_large_json_bodies_are_refused(client: TestClient, region: Region) -> None:
    deep = client.post("/fhir/Appointment", auth=AUTH, content=DEEP, headers={"Content-Type": FHIR})
    assert deep.status_code == 400 and "nested" in outcome(deep)["diagnostics"]
    url = f"/api/queue/{region.polyclinic_id}/call-next"
    nested = {"room": "1", "x": json.loads("[" * 60 + "]" * 60)}
    assert client.post(url, auth=AUTH, json=nested).status_code == 200  # deep enough is fine
    deep = client.post(url, auth=AUTH, content=DEEP, headers={"Content-Type": "application/json"})
    assert deep.status_code == 400 and "nested" in deep.json()["detail"]
    # Brackets inside strings are text, not nesting.
    text = client.post(url, auth=AUTH, json={"room": "1", "note": DEEP})
    assert text.status_code == 200
    large = client.post(
        url,
        auth=AUTH,
        content=b'{"room": "1", "x": "' + b"a" * (1024 * 1024) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert large.status_code == 413 and "KiB" in large.json()["detail"]


def test_dicomweb_numbers_are_strict(client: TestClient, runtime: Runtime) -> None:
    buffer = io.BytesIO()
    chest().save_as(buffer, enforce_file_format=True)
    parsed = parse_part10(buffer.getvalue())
    runtime.archive.store_instances([parsed], source="test")
    base = (
        f"/dicom-web/studies/{parsed.study_instance_uid}/series/{parsed.series_instance_uid}"
        f"/instances/{parsed.sop_instance_uid}"
    )
    assert client.get(f"{base}/rendered", auth=AUTH).status_code == 200
    for url in (
        f"/dicom-web/studies?offset={HUGE}",
        f"/dicom-web/studies?limit={quote('٣')}",
        f"/dicom-web/instances?InstanceNumber={HUGE}",
        f"{base}/frames/{quote('²')}",
        f"{base}/frames/{HUGE}",
        f"{base}/frames/{quote('٣')}/rendered",
        f"{base}/rendered?viewport=1e999,1e999",
        f"{base}/rendered?viewport=100000,100000",
        f"{base}/rendered?window=nan,400",
        f"{base}/rendered?window={quote('٣')},400",
        f"{base}/rendered?quality={quote('²')}",
        f"{base}/bulkdata/{quote('٣' * 8)}",
    ):
        response = client.get(url, auth=AUTH, headers={"Accept": "*/*"})
        assert response.status_code == 400, (url, response.status_code, response.text[:200])
        assert response.json()["detail"]


def test_refusals_keep_the_connection_open(runtime: Runtime, region: Region) -> None:
    """After a 500 uvicorn closes the connection; after a 4xx it is kept for the next call."""
    server = LiveServer(runtime)
    server.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        auth = "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
        requests = [
            ("GET", "/fhir/Patient/%C2%B2", None, {}),
            ("GET", f"/api/ai/studies?offset={HUGE}", None, {}),
            ("POST", "/fhir/Appointment", DEEP, {"Content-Type": FHIR}),
            ("POST", f"/api/queue/{HUGE}/call-next", '{"room": "1"}', {}),
            ("GET", f"/fhir/Practitioner/{region.therapist_id}", None, {}),
        ]
        connection.connect()
        socket = connection.sock
        for method, url, body, headers in requests:
            connection.request(method, url, body=body, headers={"Authorization": auth, **headers})
            response = connection.getresponse()
            response.read()
            assert response.status < 500, (url, response.status)
            assert response.getheader("connection", "").lower() != "close", url
            assert connection.sock is socket, f"the connection was closed after {url}"
        connection.close()
    finally:
        server.stop()
