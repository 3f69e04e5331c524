"""Registry and scheduling rows as FHIR R4 resources (``fhir.resources`` models).

``fhir.resources`` 8 ships R5 by default and R4B (4.3) as a sub-package; the six resources
served here are the same in R4 (4.0.1) and R4B, so their R4B models validate what is sent
and received, and the server declares FHIR 4.0.1.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.schedule import Schedule as FhirSchedule
from fhir.resources.R4B.slot import Slot as FhirSlot

from qamqor.registry import (
    SPECIALTY_NAMES,
    District,
    Doctor,
    Facility,
    FacilityKind,
    Resident,
    Sex,
    Specialty,
)
from qamqor.scheduling.fhir import (
    FACILITY_KIND_SYSTEM,
    FACILITY_SYSTEM,
    IIN_SYSTEM,
    SPECIALTY_SYSTEM,
    STAFF_SYSTEM,
)
from qamqor.scheduling.models import Appointment, Schedule, Slot


def _instant(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def specialty_concept(code: str) -> dict[str, Any]:
    known = {s.value: s for s in Specialty}
    display = SPECIALTY_NAMES[known[code]] if code in known else code
    return {"coding": [{"system": SPECIALTY_SYSTEM, "code": code, "display": display}]}


def patient(resident: Resident) -> Patient:
    telecom = [{"system": "phone", "value": resident.phone, "use": "mobile"}]
    address = {
        "use": "home",
        "line": [resident.address_line] if resident.address_line else None,
        "city": resident.settlement or None,
        "state": resident.region or None,
        "country": "KZ",
    }
    return Patient.model_validate(
        {
            "resourceType": "Patient",
            "id": str(resident.id),
            "identifier": [
                {
                    "use": "official",
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "NI",
                            }
                        ],
                        "text": "IIN",
                    },
                    "system": IIN_SYSTEM,
                    "value": resident.iin,
                }
            ],
            "active": True,
            "name": [
                {
                    "use": "official",
                    "family": resident.family_name,
                    "given": [g for g in (resident.given_name, resident.patronymic) if g],
                }
            ],
            "telecom": telecom if resident.phone else None,
            "gender": Sex(resident.sex).value,
            "birthDate": resident.birth_date.isoformat(),
            "address": [{k: v for k, v in address.items() if v}],
            "communication": [
                {
                    "language": {
                        "coding": [{"system": "urn:ietf:bcp:47", "code": resident.language}]
                    },
                    "preferred": True,
                }
            ],
        }
    )


def practitioner(doctor: Doctor) -> Practitioner:
    return Practitioner.model_validate(
        {
            "resourceType": "Practitioner",
            "id": str(doctor.id),
            "identifier": [{"system": STAFF_SYSTEM, "value": doctor.code}],
            "active": doctor.active,
            "name": [
                {
                    "family": doctor.family_name,
                    "given": [g for g in (doctor.given_name, doctor.patronymic) if g],
                }
            ],
            "qualification": [{"code": specialty_concept(doctor.specialty)}],
        }
    )


def organization(facility: Facility, district: District | None) -> Organization:
    return Organization.model_validate(
        {
            "resourceType": "Organization",
            "id": str(facility.id),
            "identifier": [{"system": FACILITY_SYSTEM, "value": facility.code}],
            "active": facility.is_open,
            "type": [
                {
                    "coding": [
                        {"system": FACILITY_KIND_SYSTEM, "code": FacilityKind(facility.kind).value}
                    ]
                }
            ],
            "name": facility.name,
            "alias": [facility.name_ru] if facility.name_ru else None,
            "address": [
                {
                    "text": facility.address or None,
                    "district": district.name if district else None,
                    "country": "KZ",
                }
            ],
        }
    )


def schedule(row: Schedule) -> FhirSchedule:
    return FhirSchedule.model_validate(
        {
            "resourceType": "Schedule",
            "id": str(row.id),
            "active": True,
            "specialty": [specialty_concept(row.specialty)],
            "actor": [{"reference": f"Practitioner/{row.doctor_id}"}],
            "planningHorizon": {
                "start": row.start_date.isoformat(),
                "end": row.end_date.isoformat(),
            },
            "comment": f"Organization/{row.facility_id}",
        }
    )


def slot(row: Slot) -> FhirSlot:
    return FhirSlot.model_validate(
        {
            "resourceType": "Slot",
            "id": str(row.id),
            "schedule": {"reference": f"Schedule/{row.schedule_id}"},
            "specialty": [specialty_concept(row.specialty)],
            "status": row.status,
            "start": _instant(row.start),
            "end": _instant(row.end),
        }
    )


def appointment(row: Appointment) -> FhirAppointment:
    return FhirAppointment.model_validate(
        {
            "resourceType": "Appointment",
            "id": str(row.id),
            "status": row.status,
            "specialty": [specialty_concept(row.specialty)],
            "start": _instant(row.start),
            "end": _instant(row.end),
            "created": _instant(row.booked_at),
            "slot": [{"reference": f"Slot/{row.slot_id}"}],
            "participant": [
                {"actor": {"reference": f"Patient/{row.resident_id}"}, "status": "accepted"},
                {
                    "actor": {"reference": f"Practitioner/{row.doctor_id}"},
                    "status": "accepted",
                },
            ],
        }
    )


def searchset(resources: list[Any], *, self_url: str, total: int | None = None) -> Bundle:
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": self_url}],
            "entry": [
                {
                    "fullUrl": f"{resource.__resource_type__}/{resource.id}",
                    "resource": resource,
                    "search": {"mode": "match"},
                }
                for resource in resources
            ]
            or None,
        }
    )


def outcome(code: str, diagnostics: str, details: str | None = None) -> OperationOutcome:
    """An OperationOutcome with one error issue (``code`` from the FHIR ``issue-type``)."""
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if details:
        issue["details"] = {"text": details}
    return OperationOutcome.model_validate({"resourceType": "OperationOutcome", "issue": [issue]})
