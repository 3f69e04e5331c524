"""Answers to programs are never cached and never sniffed, errors included; pages are not
sniffed either; static files may be cached."""

from __future__ import annotations

import io

import httpx
import pytest
from fastapi.testclient import TestClient

from qamqor.core.auth import create_user
from qamqor.pacs.parsing import parse_part10
from qamqor.runtime import Runtime
from qamqor.web.app import create_app
from tests.ai.dicom_factory import chest

AUTH = ("boss", "boss-password")


@pytest.fixture
def client(runtime: Runtime) -> TestClient:
    with runtime.session_factory() as session:
        create_user(session, username=AUTH[0], password=AUTH[1], role="admin")
        session.commit()
    return TestClient(create_app(runtime))


def no_store_nosniff(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url} -> {response.status_code}"
    assert response.headers.get("cache-control") == "no-store", where
    assert response.headers.get("x-content-type-options") == "nosniff", where


def test_json_fhir_and_dicomweb_answers_are_not_stored(
    client: TestClient, runtime: Runtime
) -> None:
    buffer = io.BytesIO()
    chest().save_as(buffer, enforce_file_format=True)
    parsed = parse_part10(buffer.getvalue())
    runtime.archive.store_instances([parsed], source="test")
    study = parsed.study_instance_uid
    instance = (
        f"/dicom-web/studies/{study}/series/{parsed.series_instance_uid}"
        f"/instances/{parsed.sop_instance_uid}"
    )
    answers = [
        client.get("/health"),
        client.get("/api/openapi.json"),
        client.get("/api/ai/studies", auth=AUTH),
        client.get("/api/ai/studies"),  # 401
        client.get("/api/ai/studies?offset=-1", auth=AUTH),  # 422
        client.get("/api/ai/studies/1.2.3", auth=AUTH),  # 404
        client.post("/api/queue/1/call-next", auth=AUTH, content="x"),  # 415
        client.get("/fhir/metadata"),
        client.get("/fhir/Patient/1", auth=AUTH),  # 404 OperationOutcome
        client.get("/fhir/Slot"),  # 401 OperationOutcome
        client.get("/dicom-web/studies", auth=AUTH),
        client.get(f"/dicom-web/studies/{study}/metadata", auth=AUTH),
        client.get(instance, auth=AUTH),  # multipart/related DICOM
        client.get(f"{instance}/rendered", auth=AUTH, headers={"Accept": "image/png"}),
        client.get("/dicom-web/studies/1.2.3/metadata", auth=AUTH),  # 404
        client.get("/dicom-web/studies"),  # 401
        client.get("/no/such/thing", headers={"Accept": "application/json"}),  # 404 JSON
    ]
    assert {a.status_code for a in answers} >= {200, 401, 404, 415, 422}
    for answer in answers:
        no_store_nosniff(answer)


def test_pages_are_not_sniffed_and_static_files_may_be_cached(client: TestClient) -> None:
    page = client.get("/login")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    redirect = client.get("/studies", follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["x-content-type-options"] == "nosniff"
    static = client.get("/static/qamqor.css")
    assert static.status_code == 200
    assert static.headers["cache-control"].startswith("public")
    assert static.headers["x-content-type-options"] == "nosniff"
