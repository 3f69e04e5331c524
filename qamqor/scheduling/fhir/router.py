"""HTTP endpoints of the FHIR API. Every answer is ``application/fhir+json``; every error,
including authentication and validation errors, is an OperationOutcome.

Endpoints parse the request, call ``queries`` (reads, audited reads, the booking) and render
FHIR resources; they run no queries and hold no transactions of their own."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, time
from typing import Annotated, Any, cast
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from qamqor import __version__
from qamqor.core.audit import AuditAction
from qamqor.core.auth import REGISTRY_ROLES
from qamqor.core.errors import QamqorError
from qamqor.core.i18n import gettext, normalise_language
from qamqor.core.timezone import region_zone
from qamqor.http.deps import DbSession, Principal, RuntimeDep, require_role
from qamqor.http.errors import status_for
from qamqor.http.params import DB_INT_MAX, parse_id, whole_number
from qamqor.registry import InvalidIINError
from qamqor.scheduling.enums import SlotStatus
from qamqor.scheduling.errors import (
    ConflictingAppointmentError,
    SlotNotFoundError,
    SlotTakenError,
)
from qamqor.scheduling.fhir import (
    DISTRICT_SEARCH_PARAM,
    FHIR_JSON,
    IIN_SYSTEM,
    queries,
    resources,
)

logger = logging.getLogger(__name__)
MAX_COUNT = 200
DEFAULT_COUNT = 50


class FhirError(Exception):
    def __init__(self, status: int, code: str, diagnostics: str, details: str = "") -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics, self.details = status, code, diagnostics, details


def fhir_response(
    resource: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        resource.model_dump_json(exclude_none=True),
        status_code=status,
        media_type=FHIR_JSON,
        headers=headers,
    )


def _language(request: Request) -> str:
    return normalise_language(request.headers.get("accept-language"))


_HTTP_CODES = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported"}
#: Domain errors as FHIR issue types.
_ISSUE_CODES: list[tuple[type[QamqorError], str]] = [
    (SlotTakenError, "conflict"),
    (ConflictingAppointmentError, "duplicate"),
    (InvalidIINError, "invalid"),
]


def _issue_code(exc: QamqorError) -> str:
    for cls, code in _ISSUE_CODES:
        if isinstance(exc, cls):
            return code
    return {404: "not-found", 409: "business-rule"}.get(status_for(exc), "processing")


class FhirRoute(APIRoute):
    """Turns every error of a FHIR endpoint (and of its dependencies) into an
    OperationOutcome, with the message translated for ``Accept-Language`` in ``details``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except FhirError as exc:
                error = resources.outcome(exc.code, exc.diagnostics, exc.details or None)
                return fhir_response(error, exc.status)
            except QamqorError as exc:
                details = gettext(_language(request), exc.message)
                error = resources.outcome(_issue_code(exc), exc.message, details)
                return fhir_response(error, status_for(exc))
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                    for e in exc.errors()
                )
                return fhir_response(resources.outcome("invalid", problems), 400)
            except HTTPException as exc:
                code = _HTTP_CODES.get(exc.status_code, "processing")
                return fhir_response(
                    resources.outcome(code, str(exc.detail)),
                    exc.status_code,
                    dict(exc.headers or {}),
                )

        return handler


router = APIRouter(prefix="/fhir", tags=["fhir"], route_class=FhirRoute)
FhirUser = Annotated[Principal, Depends(require_role(*REGISTRY_ROLES))]


def _count(value: int | None) -> int:
    if value is None:
        return DEFAULT_COUNT
    if value < 0:
        raise FhirError(400, "invalid", "_count must not be negative")
    return min(value, MAX_COUNT)


#: What a logical id of this server is, for the reasons of refusals.
_ID_RULE = f"ids of this server are whole numbers from 1 to {DB_INT_MAX}, in the digits 0-9"
#: A logical id in a path (documented as digits; anything else is a 404 that says why).
FhirId = Annotated[str, Path(description=_ID_RULE, json_schema_extra={"pattern": "^[0-9]{1,10}$"})]


def _id(value: str, resource_type: str, *, search: bool = False) -> int:
    """The row id in ``value`` (``7`` or ``Patient/7``). A read of an id no row can have is
    404 (nothing is there); a search parameter that is not an id is 400."""
    found = parse_id(value.removeprefix(f"{resource_type}/"))
    if found is not None:
        return found
    if search:
        raise FhirError(400, "invalid", f"{value!r} is not a {resource_type} id: {_ID_RULE}")
    raise FhirError(404, "not-found", f"no {resource_type} {value!r}: {_ID_RULE}")


def _source(request: Request) -> str:
    """The audit trail's ``source`` of a FHIR request."""
    return f"fhir:{request.client.host if request.client else 'unknown'}"


def _audit(
    session: Session,
    user: Principal,
    request: Request,
    action: AuditAction,
    object_type: str,
    object_id: str,
) -> None:
    queries.record_access(
        session,
        action,
        actor=user.username,
        object_type=object_type,
        object_id=object_id,
        source=_source(request),
    )


def _self_url(request: Request) -> str:
    return str(request.url)


# metadata ------------------------------------------------------------------------------------
SEARCH_PARAMS: dict[str, list[tuple[str, str, str]]] = {
    "Patient": [
        ("identifier", "token", f"IIN as {IIN_SYSTEM}|<12 digits>"),
        ("_id", "token", "logical id"),
    ],
    "Practitioner": [("_id", "token", "logical id"), ("specialty", "token", "specialty code")],
    "Organization": [("_id", "token", "logical id")],
    "Schedule": [("actor", "reference", "Practitioner/<id>")],
    "Slot": [
        ("status", "token", "free | busy"),
        ("start", "date", "ge/gt/le/lt/eq prefixes, repeatable"),
        ("specialty", "token", "specialty code"),
        ("schedule", "reference", "Schedule/<id>"),
        ("district", "token", "district id (Qamqor)"),
    ],
    "Appointment": [
        ("patient", "reference", "Patient/<id>"),
        ("status", "token", "booked | arrived | cancelled | ..."),
    ],
}


@router.get("/metadata")
def metadata(request: Request) -> Response:
    """The CapabilityStatement (public, as FHIR expects: it holds no personal data)."""
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    rest_resources = []
    for name, params in SEARCH_PARAMS.items():
        interactions = [{"code": "read"}, {"code": "search-type"}]
        if name == "Appointment":
            interactions.append({"code": "create"})
        rest_resources.append(
            {
                "type": name,
                "interaction": interactions,
                "searchParam": [
                    {
                        "name": p,
                        "type": t,
                        "documentation": doc,
                        **({"definition": DISTRICT_SEARCH_PARAM} if p == "district" else {}),
                    }
                    for p, t, doc in params
                ],
            }
        )
    statement = CapabilityStatement.model_validate(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": date.today().isoformat(),
            "publisher": "Qamqor",
            "kind": "instance",
            "software": {"name": "Qamqor", "version": __version__},
            "implementation": {
                "description": "Qamqor registry and scheduling",
                "url": str(request.base_url).rstrip("/") + "/fhir",
            },
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "documentation": (
                        f"Patients are identified by IIN, system {IIN_SYSTEM}. "
                        "Book with POST /fhir/Appointment naming a Slot and a Patient."
                    ),
                    "security": {
                        "description": "HTTP Basic or Bearer token; roles registrar, operator, "
                        "service or admin."
                    },
                    "resource": rest_resources,
                }
            ],
        }
    )
    return fhir_response(statement)


# Patient -------------------------------------------------------------------------------------
@router.get("/Patient/{patient_id}")
def read_patient(
    patient_id: FhirId, request: Request, session: DbSession, user: FhirUser
) -> Response:
    resident = queries.patient(session, _id(patient_id, "Patient"))
    if resident is None:
        raise FhirError(404, "not-found", f"no Patient {patient_id}")
    _audit(session, user, request, AuditAction.FHIR_READ, "resident", str(resident.id))
    return fhir_response(resources.patient(resident))


@router.get("/Patient")
def search_patients(
    request: Request,
    session: DbSession,
    user: FhirUser,
    identifier: str | None = None,
    logical_id: Annotated[str | None, Query(alias="_id")] = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
) -> Response:
    """``identifier=http://qamqor.kz/fhir/sid/iin|<IIN>`` (or the bare IIN) or ``_id``.
    A search without either is refused: residents are not listed in bulk."""
    limit = _count(count)
    if identifier:
        system, bar, value = identifier.rpartition("|")
        if bar and system not in ("", IIN_SYSTEM):
            raise FhirError(400, "not-supported", f"unknown identifier system {system!r}")
        found = queries.patients(session, iin=value, limit=limit)
    elif logical_id:
        found = queries.patients(
            session, resident_id=_id(logical_id, "Patient", search=True), limit=limit
        )
    else:
        raise FhirError(400, "too-costly", "search Patients by identifier or _id")
    _audit(
        session,
        user,
        request,
        AuditAction.FHIR_SEARCH,
        "resident",
        ",".join(str(r.id) for r in found),
    )
    bundle = resources.searchset(
        [resources.patient(r) for r in found], self_url=_self_url(request), total=len(found)
    )
    return fhir_response(bundle)


# Practitioner, Organization, Schedule ---------------------------------------------------------
@router.get("/Practitioner/{practitioner_id}")
def read_practitioner(practitioner_id: FhirId, session: DbSession, user: FhirUser) -> Response:
    doctor = queries.practitioner(session, _id(practitioner_id, "Practitioner"))
    if doctor is None:
        raise FhirError(404, "not-found", f"no Practitioner {practitioner_id}")
    return fhir_response(resources.practitioner(doctor))


@router.get("/Practitioner")
def search_practitioners(
    request: Request,
    session: DbSession,
    user: FhirUser,
    specialty: str | None = None,
    logical_id: Annotated[str | None, Query(alias="_id")] = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
) -> Response:
    limit = _count(count)
    doctors = queries.practitioners(
        session,
        specialty=specialty.rpartition("|")[2] if specialty else None,
        doctor_id=_id(logical_id, "Practitioner", search=True) if logical_id else None,
        limit=limit,
    )
    found = [resources.practitioner(d) for d in doctors]
    return fhir_response(resources.searchset(found, self_url=_self_url(request)))


@router.get("/Organization/{organization_id}")
def read_organization(organization_id: FhirId, session: DbSession, user: FhirUser) -> Response:
    found = queries.organization(session, _id(organization_id, "Organization"))
    if found is None:
        raise FhirError(404, "not-found", f"no Organization {organization_id}")
    return fhir_response(resources.organization(*found))


@router.get("/Organization")
def search_organizations(
    request: Request,
    session: DbSession,
    user: FhirUser,
    logical_id: Annotated[str | None, Query(alias="_id")] = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
) -> Response:
    limit = _count(count)
    rows = queries.organizations(
        session,
        facility_id=_id(logical_id, "Organization", search=True) if logical_id else None,
        limit=limit,
    )
    found = [resources.organization(f, d) for f, d in rows]
    return fhir_response(resources.searchset(found, self_url=_self_url(request)))


@router.get("/Schedule/{schedule_id}")
def read_schedule(schedule_id: FhirId, session: DbSession, user: FhirUser) -> Response:
    row = queries.schedule(session, _id(schedule_id, "Schedule"))
    if row is None:
        raise FhirError(404, "not-found", f"no Schedule {schedule_id}")
    return fhir_response(resources.schedule(row))


@router.get("/Schedule")
def search_schedules(
    request: Request,
    session: DbSession,
    user: FhirUser,
    actor: str | None = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
) -> Response:
    limit = _count(count)
    rows = queries.schedules(
        session,
        doctor_id=_id(actor, "Practitioner", search=True) if actor else None,
        limit=limit,
    )
    found = [resources.schedule(s) for s in rows]
    return fhir_response(resources.searchset(found, self_url=_self_url(request)))


# Slot ----------------------------------------------------------------------------------------
_PREFIXES = ("ge", "gt", "le", "lt", "eq")


def _parse_when(text: str, zone: ZoneInfo) -> queries.StartBound:
    """A FHIR date search value as its prefix and its lower and upper bounds in UTC."""
    prefix = text[:2] if text[:2] in _PREFIXES else "eq"
    value = text[2:] if text[:2] in _PREFIXES else text
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            low = datetime.combine(day, time(0), zone)
            high = datetime.combine(day, time.max, zone)
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            low = high = moment
    except ValueError:
        raise FhirError(400, "invalid", f"not a FHIR date or dateTime: {text!r}") from None
    return queries.StartBound(
        cast(queries.Prefix, prefix), low.astimezone(UTC), high.astimezone(UTC)
    )


@router.get("/Slot/{slot_id}")
def read_slot(slot_id: FhirId, session: DbSession, user: FhirUser) -> Response:
    row = queries.slot(session, _id(slot_id, "Slot"))
    if row is None:
        raise FhirError(404, "not-found", f"no Slot {slot_id}")
    return fhir_response(resources.slot(row))


@router.get("/Slot")
def search_slots(
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: FhirUser,
    status: str | None = None,
    start: Annotated[list[str] | None, Query()] = None,
    specialty: str | None = None,
    schedule: str | None = None,
    district: str | None = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
) -> Response:
    """Slots, the soonest first; ``status=free`` lists only bookable ones."""
    zone = region_zone(runtime.settings)
    limit = _count(count)
    statuses: list[SlotStatus] = []
    if status:
        known = {s.value: s for s in SlotStatus}
        if not set(status.split(",")) <= set(known):
            raise FhirError(400, "invalid", f"unknown Slot status {status!r}")
        statuses = [known[s] for s in status.split(",")]
    starts = [_parse_when(value, zone) for value in start or []]
    schedule_id = _id(schedule, "Schedule", search=True) if schedule else None
    district_id = None
    if district:
        try:
            district_id = whole_number(district, name="district (a district id)", minimum=1)
        except ValueError as exc:
            raise FhirError(400, "invalid", str(exc)) from None
    rows = queries.slots(
        session,
        statuses=statuses,
        starts=starts,
        specialty=specialty.rpartition("|")[2] if specialty else None,
        schedule_id=schedule_id,
        district_id=district_id,
        limit=limit,
    )
    found = [resources.slot(s) for s in rows]
    return fhir_response(resources.searchset(found, self_url=_self_url(request)))


# Appointment ---------------------------------------------------------------------------------
@router.get("/Appointment/{appointment_id}")
def read_appointment(
    appointment_id: FhirId, request: Request, session: DbSession, user: FhirUser
) -> Response:
    row = queries.appointment(session, _id(appointment_id, "Appointment"))
    if row is None:
        raise FhirError(404, "not-found", f"no Appointment {appointment_id}")
    _audit(session, user, request, AuditAction.FHIR_READ, "appointment", str(row.id))
    return fhir_response(resources.appointment(row))


@router.get("/Appointment")
def search_appointments(
    request: Request,
    session: DbSession,
    user: FhirUser,
    patient: str | None = None,
    status: str | None = None,
    count: Annotated[int | None, Query(alias="_count")] = None,
) -> Response:
    """A patient's appointments (``patient`` is required: no bulk listing)."""
    if not patient:
        raise FhirError(400, "too-costly", "search Appointments by patient")
    resident_id = _id(patient, "Patient", search=True)
    rows = queries.appointments(
        session,
        resident_id=resident_id,
        statuses=status.split(",") if status else (),
        limit=_count(count),
    )
    _audit(
        session, user, request, AuditAction.FHIR_SEARCH, "appointment", f"resident:{resident_id}"
    )
    found = [resources.appointment(a) for a in rows]
    return fhir_response(resources.searchset(found, self_url=_self_url(request), total=len(found)))


def _reference_id(reference: Any, resource_type: str) -> int | None:
    text = getattr(reference, "reference", None) or ""
    if not text.startswith(f"{resource_type}/"):
        return None
    found = parse_id(text.split("/", 1)[1])
    if found is None:
        raise FhirError(
            422, "invalid", f"{text!r} is not a {resource_type} of this server: {_ID_RULE}"
        )
    return found


_REFERENCE = {"type": "object", "properties": {"reference": {"type": "string"}}}
_APPOINTMENT_SCHEMA = {
    "type": "object",
    "required": ["resourceType", "status", "slot", "participant"],
    "properties": {
        "resourceType": {"const": "Appointment"},
        "status": {"enum": ["proposed", "pending", "booked"]},
        "slot": {"type": "array", "items": _REFERENCE, "description": "one Slot/<id>"},
        "participant": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "actor": {
                        "type": "object",
                        "description": "Patient/<id>, or an identifier with the IIN",
                        "properties": {
                            "reference": {"type": "string"},
                            "identifier": {
                                "type": "object",
                                "properties": {
                                    "system": {"type": "string"},
                                    "value": {"type": "string"},
                                },
                            },
                        },
                    },
                    "status": {"type": "string"},
                },
            },
        },
    },
}


@router.post(
    "/Appointment",
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                FHIR_JSON: {"schema": _APPOINTMENT_SCHEMA},
                "application/json": {"schema": _APPOINTMENT_SCHEMA},
            },
        }
    },
)
async def create_appointment(request: Request, runtime: RuntimeDep, user: FhirUser) -> Response:
    """Book: an Appointment naming one ``slot`` and a Patient participant (by reference
    ``Patient/<id>`` or by IIN identifier). 201 with ``Location``; 409 if the slot is taken."""
    from fhir.resources.R4B.appointment import Appointment as FhirAppointment

    body = await request.body()
    try:
        payload = json.loads(body)
        submitted = FhirAppointment.model_validate(payload)
    except (ValueError, ValidationError, RecursionError) as exc:
        summary = type(exc).__name__
        if isinstance(exc, ValidationError):
            summary = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
            )
        raise FhirError(400, "structure", f"not a valid FHIR Appointment: {summary}") from None
    if submitted.status not in ("proposed", "pending", "booked"):
        raise FhirError(422, "business-rule", "a new Appointment has status booked")
    slots = [i for s in submitted.slot or [] if (i := _reference_id(s, "Slot")) is not None]
    if len(slots) != 1:
        raise FhirError(422, "required", "name exactly one Slot (slot: [{reference: Slot/<id>}])")
    resident_id: int | None = None
    iin: str | None = None
    for participant in submitted.participant or []:
        actor = participant.actor
        if actor is None:
            continue
        found = _reference_id(actor, "Patient")
        if found is not None:
            resident_id = found
        elif actor.identifier is not None and actor.identifier.system == IIN_SYSTEM:
            iin = actor.identifier.value or ""
    if resident_id is None and iin is None:
        raise FhirError(
            422, "required", "name the Patient: actor Patient/<id> or an IIN identifier"
        )
    language = _language(request)
    host = request.client.host if request.client else "unknown"
    location_base = str(request.base_url).rstrip("/")
    # The database work runs in the thread pool: the event loop never waits on it.
    result, booked_id = await run_in_threadpool(
        _book, runtime, user, slots[0], resident_id, iin, language, host
    )
    logger.info("appointment %d booked through FHIR by %s", booked_id, user.username)
    return fhir_response(result, 201, {"Location": f"{location_base}/fhir/Appointment/{booked_id}"})


def _book(
    runtime: Any,
    user: Principal,
    slot_id: int,
    resident_id: int | None,
    iin: str | None,
    language: str,
    host: str,
) -> tuple[Any, int]:
    try:
        booked = queries.book(
            runtime.session_factory,
            slot_id=slot_id,
            resident_id=resident_id,
            iin=iin,
            actor=user.username,
            source=f"fhir:{host}",
        )
    except queries.UnknownPatientError as exc:
        raise FhirError(422, "not-found", f"no Patient/{exc.resident_id}") from None
    except SlotNotFoundError as exc:
        raise FhirError(422, "not-found", exc.message, gettext(language, exc.message)) from None
    except QamqorError as exc:
        status = 422 if status_for(exc) in (400, 404) else status_for(exc)
        raise FhirError(
            status, _issue_code(exc), exc.message, gettext(language, exc.message)
        ) from None
    return resources.appointment(booked), booked.id


routers = [router]
