"""The FHIR R4 API at /fhir, on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from qamqor.core.auth import create_user
from qamqor.core.db import utcnow
from qamqor.core.models import AuditEvent
from qamqor.runtime import Runtime
from qamqor.scheduling.fhir import IIN_SYSTEM
from qamqor.web.app import create_app
from tests.registry.region import Region, build_region

AUTH = ("registrar1", "registrar-password")


@pytest.fixture
def api(runtime: Runtime) -> tuple[TestClient, Region]:
    region = build_region(runtime)
    with runtime.session_factory() as session:
        create_user(session, username=AUTH[0], password=AUTH[1], role="registrar")
        create_user(session, username="kiosk1", password="kiosk-password", role="kiosk")
        session.commit()
    return TestClient(create_app(runtime)), region


def issue(response) -> dict:
    body = response.json()
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]


def book(client: TestClient, slot: str, patient: dict, **headers: str):
    return client.post(
        "/fhir/Appointment",
        auth=AUTH,
        headers={"Content-Type": "application/fhir+json", **headers},
        json={
            "resourceType": "Appointment",
            "status": "booked",
            "slot": [{"reference": slot}],
            "participant": [{"actor": patient, "status": "accepted"}],
        },
    )


def test_capability_statement(api: tuple[TestClient, Region]) -> None:
    client, _ = api
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in body["rest"][0]["resource"]}
    assert types == {"Patient", "Practitioner", "Organization", "Schedule", "Slot", "Appointment"}
    assert IIN_SYSTEM in body["rest"][0]["documentation"]


def test_auth_is_required_and_roles_are_checked(api: tuple[TestClient, Region]) -> None:
    client, region = api
    anonymous = client.get(f"/fhir/Patient?identifier={IIN_SYSTEM}|{region.man_iin}")
    assert anonymous.status_code == 401
    assert issue(anonymous)["code"] == "login"
    kiosk = client.get("/fhir/Slot?status=free", auth=("kiosk1", "kiosk-password"))
    assert kiosk.status_code == 403
    assert issue(kiosk)["code"] == "forbidden"


def test_patient_search_by_iin(api: tuple[TestClient, Region], runtime: Runtime) -> None:
    client, region = api
    response = client.get(f"/fhir/Patient?identifier={IIN_SYSTEM}|{region.woman_iin}", auth=AUTH)
    assert response.status_code == 200
    bundle = response.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 1
    patient = bundle["entry"][0]["resource"]
    assert patient["identifier"][0] == {
        "use": "official",
        "type": patient["identifier"][0]["type"],
        "system": IIN_SYSTEM,
        "value": region.woman_iin,
    }
    assert patient["gender"] == "female" and patient["birthDate"] == "1975-03-08"
    assert client.get(f"/fhir/Patient/{patient['id']}", auth=AUTH).json()["id"] == patient["id"]

    bad = region.woman_iin[:11] + str((int(region.woman_iin[11]) + 1) % 10)
    wrong = client.get(
        f"/fhir/Patient?identifier={IIN_SYSTEM}|{bad}", auth=AUTH, headers={"Accept-Language": "ru"}
    )
    assert wrong.status_code == 422
    problem = issue(wrong)
    assert problem["code"] == "invalid"
    assert "check digit" in problem["diagnostics"]
    assert "контрольн" in problem["details"]["text"]
    assert client.get("/fhir/Patient", auth=AUTH).status_code == 400
    assert client.get("/fhir/Patient/999999", auth=AUTH).status_code == 404
    with runtime.session_factory() as session:
        reads = session.scalars(select(AuditEvent.action).where(AuditEvent.actor == AUTH[0])).all()
    assert "fhir_search" in reads and "fhir_read" in reads


def test_free_slot_search(api: tuple[TestClient, Region]) -> None:
    client, region = api
    tomorrow = (utcnow() + timedelta(days=1)).date().isoformat()
    response = client.get(
        f"/fhir/Slot?status=free&specialty=therapist&start=ge{tomorrow}&_count=3", auth=AUTH
    )
    assert response.status_code == 200
    entries = [e["resource"] for e in response.json()["entry"]]
    assert len(entries) == 3
    assert all(e["status"] == "free" and e["resourceType"] == "Slot" for e in entries)
    starts = [e["start"] for e in entries]
    assert starts == sorted(starts)
    schedule = client.get(f"/fhir/{entries[0]['schedule']['reference']}", auth=AUTH).json()
    practitioner = client.get(f"/fhir/{schedule['actor'][0]['reference']}", auth=AUTH).json()
    assert practitioner["resourceType"] == "Practitioner"
    organizations = client.get("/fhir/Organization", auth=AUTH).json()
    assert len(organizations["entry"]) == 2
    assert client.get("/fhir/Slot?start=geyesterday", auth=AUTH).status_code == 400
    district = client.get(
        f"/fhir/Slot?status=free&district={region.district_id}&_count=2", auth=AUTH
    ).json()
    assert len(district["entry"]) == 2


def test_booking_through_fhir(api: tuple[TestClient, Region], runtime: Runtime) -> None:
    client, region = api
    slot = client.get("/fhir/Slot?status=free&specialty=therapist&_count=1", auth=AUTH).json()
    slot_ref = f"Slot/{slot['entry'][0]['resource']['id']}"

    created = book(client, slot_ref, {"reference": f"Patient/{region.man_id}"})
    assert created.status_code == 201, created.text
    appointment = created.json()
    assert appointment["status"] == "booked"
    assert created.headers["location"].endswith(f"/fhir/Appointment/{appointment['id']}")
    assert client.get(created.headers["location"], auth=AUTH).json()["slot"] == [
        {"reference": slot_ref}
    ]
    assert client.get(f"/fhir/{slot_ref}", auth=AUTH).json()["status"] == "busy"

    taken = book(
        client,
        slot_ref,
        {"identifier": {"system": IIN_SYSTEM, "value": region.woman_iin}},
        **{"Accept-Language": "kk"},
    )
    assert taken.status_code == 409
    problem = issue(taken)
    assert problem["code"] == "conflict"
    assert problem["details"]["text"] != problem["diagnostics"]  # in Kazakh

    mine = client.get(f"/fhir/Appointment?patient=Patient/{region.man_id}", auth=AUTH).json()
    assert [e["resource"]["id"] for e in mine["entry"]] == [appointment["id"]]
    with runtime.session_factory() as session:
        booked = session.scalars(
            select(AuditEvent.object_id).where(AuditEvent.action == "fhir_book")
        ).all()
    assert booked == [appointment["id"]]


def test_bad_bookings_are_refused_with_an_outcome(api: tuple[TestClient, Region]) -> None:
    client, region = api
    free = client.get("/fhir/Slot?status=free&_count=1", auth=AUTH).json()
    slot_ref = f"Slot/{free['entry'][0]['resource']['id']}"
    unknown_slot = book(client, "Slot/999999", {"reference": f"Patient/{region.man_id}"})
    assert unknown_slot.status_code == 422
    assert issue(unknown_slot)["code"] == "not-found"

    bad = region.man_iin[:11] + str((int(region.man_iin[11]) + 1) % 10)
    bad_iin = book(client, slot_ref, {"identifier": {"system": IIN_SYSTEM, "value": bad}})
    assert bad_iin.status_code == 422
    assert issue(bad_iin)["code"] == "invalid"

    unknown_patient = book(client, slot_ref, {"reference": "Patient/999999"})
    assert unknown_patient.status_code == 422

    not_json = client.post(
        "/fhir/Appointment",
        auth=AUTH,
        content=b"{oops",
        headers={"Content-Type": "application/fhir+json"},
    )
    assert not_json.status_code == 400 and issue(not_json)["code"] == "structure"
    no_slot = client.post(
        "/fhir/Appointment",
        auth=AUTH,
        json={
            "resourceType": "Appointment",
            "status": "booked",
            "participant": [
                {"actor": {"reference": f"Patient/{region.man_id}"}, "status": "accepted"}
            ],
        },
    )
    assert no_slot.status_code == 422
    # Nothing was booked by any of these.
    assert client.get(f"/fhir/{slot_ref}", auth=AUTH).json()["status"] == "free"
