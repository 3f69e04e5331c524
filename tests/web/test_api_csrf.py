"""APIs that accept the session cookie are safe from cross-site request forgery.

A state-changing request signed in by the cookie needs the page's CSRF token in
``X-CSRF-Token``; programs signing in with HTTP Basic or a bearer token need none; a request a
browser sends from another site is refused whatever its credentials; a JSON API takes only
JSON bodies (a form can send ``text/plain`` or form data, never JSON without a preflight).
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import replace

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from qamqor.core.auth import create_token, create_user
from qamqor.core.db import write_session
from qamqor.core.models import User
from qamqor.http.deps import current_user
from qamqor.runtime import Runtime
from qamqor.scheduling import service as scheduling
from qamqor.scheduling.models import Appointment, QueueTicket
from qamqor.web.app import create_app
from tests.ai.dicom_factory import chest
from tests.registry.region import Region, build_region

PASSWORD = "correct horse battery"
BASIC = "Basic " + base64.b64encode(f"boss:{PASSWORD}".encode()).decode()
FHIR = "application/fhir+json"


@pytest.fixture
def region(runtime: Runtime) -> Region:
    region = build_region(runtime)
    with runtime.session_factory() as session:
        create_user(session, username="boss", password=PASSWORD, role="admin")
        session.commit()
    return region


def signed_in(runtime: Runtime, app: FastAPI | None = None) -> tuple[TestClient, str]:
    """A browser signed in by the login page, and its CSRF token (from a page's form)."""
    client = TestClient(app or create_app(runtime))
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    response = client.post(
        "/login",
        data={"username": "boss", "password": PASSWORD, "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    page = client.get("/studies")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found
    return client, found.group(1)


def appointment(runtime: Runtime, region: Region) -> dict:
    with runtime.session_factory() as session:
        slot = scheduling.free_slots(session, specialty="therapist", limit=1)[0]
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{slot.slot_id}"}],
        "participant": [{"actor": {"reference": f"Patient/{region.man_id}"}, "status": "accepted"}],
    }


def appointments(runtime: Runtime) -> int:
    with runtime.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Appointment)) or 0)


def waiting_ticket(runtime: Runtime, region: Region) -> str:
    with write_session(runtime.session_factory) as session:
        ticket = scheduling.issue_ticket(
            session, facility_id=region.polyclinic_id, specialty="therapist"
        )
        return ticket.code


def ticket_status(runtime: Runtime) -> list[str]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(QueueTicket.status)))


def dicom_part() -> tuple[bytes, str]:
    buffer = io.BytesIO()
    chest().save_as(buffer, enforce_file_format=True)
    boundary = "csrf-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def outcome(response: httpx.Response) -> dict:
    assert response.headers["content-type"].startswith(FHIR), response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def test_fhir_booking_by_the_cookie_needs_the_csrf_header(runtime: Runtime, region: Region) -> None:
    browser, token = signed_in(runtime)
    body = appointment(runtime, region)
    forged = browser.post("/fhir/Appointment", json=body, headers={"Content-Type": FHIR})
    assert forged.status_code == 403
    issue = outcome(forged)
    assert issue["code"] == "forbidden" and "X-CSRF-Token" in issue["diagnostics"]
    # A body an HTML form can send is not JSON: refused before anything reads it.
    as_text = browser.post(
        "/fhir/Appointment",
        content=str(body).replace("'", '"'),
        headers={"Content-Type": "text/plain", "X-CSRF-Token": token},
    )
    assert as_text.status_code == 415 and "application/fhir+json" in outcome(as_text)["diagnostics"]
    assert appointments(runtime) == 0

    booked = browser.post(
        "/fhir/Appointment", json=body, headers={"Content-Type": FHIR, "X-CSRF-Token": token}
    )
    assert booked.status_code == 201, booked.text
    assert appointments(runtime) == 1
    assert browser.get("/fhir/Slot?_count=1").status_code == 200  # reads need no token


def test_queue_call_by_the_cookie_needs_the_csrf_header(runtime: Runtime, region: Region) -> None:
    code = waiting_ticket(runtime, region)
    browser, token = signed_in(runtime)
    url = f"/api/queue/{region.polyclinic_id}/call-next"
    forged = browser.post(url, json={"room": "101"})
    assert forged.status_code == 403
    assert "X-CSRF-Token" in forged.json()["detail"]
    wrong = browser.post(url, json={"room": "101"}, headers={"X-CSRF-Token": token + "x"})
    assert wrong.status_code == 403
    as_text = browser.post(
        url,
        content='{"room": "101"}',
        headers={"Content-Type": "text/plain", "X-CSRF-Token": token},
    )
    assert as_text.status_code == 415 and "JSON" in as_text.json()["detail"]
    as_form = browser.post(url, data={"room": "101"}, headers={"X-CSRF-Token": token})
    assert as_form.status_code == 415
    assert ticket_status(runtime) == ["waiting"]

    called = browser.post(url, json={"room": "101"}, headers={"X-CSRF-Token": token})
    assert called.status_code == 200 and called.json() == {"code": code, "room": "101"}


def test_stow_by_the_cookie_needs_the_csrf_header(runtime: Runtime, region: Region) -> None:
    browser, token = signed_in(runtime)
    body, content_type = dicom_part()
    forged = browser.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
    )
    assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["detail"]
    assert runtime.archive.count()["instances"] == 0
    not_multipart = browser.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": "text/plain", "X-CSRF-Token": token},
    )
    assert (
        not_multipart.status_code == 415 and "multipart/related" in not_multipart.json()["detail"]
    )
    stored = browser.post(
        "/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, "X-CSRF-Token": token},
    )
    assert stored.status_code == 200, stored.text
    assert runtime.archive.count()["instances"] == 1


def test_every_unsafe_method_of_an_api_needs_the_header_with_the_cookie(
    runtime: Runtime, region: Region
) -> None:
    """PUT, PATCH and DELETE as POST: the check is in the API's authentication."""
    app = create_app(runtime)
    changed: list[str] = []

    def change(user=Depends(current_user)) -> dict:
        changed.append(user.username)
        return {"changed": True}

    app.router.add_api_route("/api/test-change", change, methods=["POST", "PUT", "PATCH", "DELETE"])
    browser, token = signed_in(runtime, app)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        refused = browser.request(method, "/api/test-change")
        assert refused.status_code == 403, method
        assert "X-CSRF-Token" in refused.json()["detail"]
        assert browser.request(method, "/api/test-change", headers={"X-CSRF-Token": token}).json()
    assert changed == ["boss"] * 4
    assert browser.get("/api/test-change").status_code == 405


def test_basic_and_bearer_clients_need_no_token(runtime: Runtime, region: Region) -> None:
    with runtime.session_factory() as session:
        user = session.scalar(select(User).filter_by(username="boss"))
        bearer = create_token(session, user=user, name="script")
        session.commit()
    code = waiting_ticket(runtime, region)
    client = TestClient(create_app(runtime))
    url = f"/api/queue/{region.polyclinic_id}/call-next"
    called = client.post(url, json={"room": "7"}, headers={"Authorization": BASIC})
    assert called.status_code == 200 and called.json()["code"] == code
    again = client.post(url, json={"room": "7"}, headers={"Authorization": f"Bearer {bearer}"})
    assert again.status_code == 200 and again.json()["code"] is None
    booked = client.post(
        "/fhir/Appointment",
        json=appointment(runtime, region),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": FHIR},
    )
    assert booked.status_code == 201, booked.text
    with write_session(runtime.session_factory) as session:  # free the therapist again
        scheduling.cancel(session, appointment_id=int(booked.json()["id"]))
    old_style = client.post(
        "/fhir/Appointment",
        json=appointment(runtime, region),
        headers={"Authorization": BASIC, "Content-Type": "application/json+fhir"},
    )
    assert old_style.status_code == 201, old_style.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "https://other.hospital.kz"},
    ],
)
def test_cross_site_requests_are_refused_even_with_basic_credentials(
    runtime: Runtime, region: Region, headers: dict[str, str]
) -> None:
    """Browsers replay cached Basic credentials on a cross-site form or fetch."""
    waiting_ticket(runtime, region)
    client = TestClient(create_app(runtime))
    forged = client.post(
        f"/api/queue/{region.polyclinic_id}/call-next",
        json={"room": "101"},
        headers={"Authorization": BASIC, **headers},
    )
    assert forged.status_code == 403 and "may not change anything" in forged.json()["detail"]
    booking = client.post(
        "/fhir/Appointment",
        json=appointment(runtime, region),
        headers={"Authorization": BASIC, "Content-Type": FHIR, **headers},
    )
    assert booking.status_code == 403 and outcome(booking)["code"] == "forbidden"
    assert ticket_status(runtime) == ["waiting"] and appointments(runtime) == 0
    # Reading is not changing: a cross-site GET goes on (CORS decides what the page may see).
    assert client.get("/fhir/Slot?_count=1", headers={"Authorization": BASIC, **headers}).is_success


def test_same_origin_and_trusted_origins_may_change_state(runtime: Runtime, region: Region) -> None:
    viewer = "https://viewer.example.org"
    trusting = replace(
        runtime, settings=runtime.settings.model_copy(update={"cors_origins": [viewer]})
    )
    client = TestClient(create_app(trusting), base_url="http://qamqor.local")
    url = f"/api/queue/{region.polyclinic_id}/call-next"
    for headers in (
        {"Origin": "http://qamqor.local"},
        {"Origin": "https://qamqor.local", "Sec-Fetch-Site": "same-origin"},
        {"Origin": viewer, "Sec-Fetch-Site": "cross-site"},
    ):
        answer = client.post(url, json={"room": "1"}, headers={"Authorization": BASIC, **headers})
        assert answer.status_code == 200, (headers, answer.text)


def unsafe_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route that changes state, pages and APIs alike."""
    found = []
    for route in app.routes:
        contexts = (
            route.effective_route_contexts()
            if hasattr(route, "effective_route_contexts")
            else [route]
        )
        for context in contexts:
            for method in sorted(getattr(context, "methods", None) or ()):
                if method not in ("GET", "HEAD", "OPTIONS"):
                    found.append((method, context.path_format))
    return found


def test_no_state_changing_route_takes_the_cookie_without_the_token(
    runtime: Runtime, region: Region
) -> None:
    """Walks the app: a route added later without the check fails here."""
    app = create_app(runtime)
    routes = unsafe_routes(app)
    assert ("POST", "/fhir/Appointment") in routes and len(routes) >= 20
    browser, _token = signed_in(runtime, app)
    unprotected = []
    for method, path in routes:
        if path == "/login":  # no one is signed in yet; a bad token gets a fresh form (403)
            continue
        url = re.sub(r"\{[^}]+\}", "1", path)
        if path.startswith("/dicom-web"):
            body, content_type = dicom_part()
            answer = browser.request(
                method, url, content=body, headers={"Content-Type": content_type}
            )
        else:
            answer = browser.request(method, url, json={})
        if answer.status_code != 403:
            unprotected.append(f"{method} {path}: {answer.status_code}")
    assert not unprotected, unprotected
    assert browser.get("/studies").status_code == 200  # still signed in: nothing happened
