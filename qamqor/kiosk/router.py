"""The self-service terminal at ``/kiosk`` and the hall display at ``/kiosk/hall``.

Two identities: the *device* (a ``kiosk`` user placed at a facility; its bearer token, given
once on ``/kiosk/activate``, is kept in an HttpOnly cookie and checked on every request,
so revoking the token switches the device off) and the *resident* (identified by IIN and a
one-time code to the phone on record; kept in the signed session for ``kiosk_idle_seconds``
of inactivity at most).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qamqor.core import audit
from qamqor.core.auth import Role, user_for_token
from qamqor.core.db import begin_write, utcnow, write_session
from qamqor.core.errors import AuthenticationError, QamqorError
from qamqor.core.i18n import LANGUAGES, N_, gettext
from qamqor.core.runtime import Runtime
from qamqor.http.csrf import CsrfProtected
from qamqor.http.deps import DbSession, RuntimeDep
from qamqor.http.params import DbId
from qamqor.http.templating import LANGUAGE_SESSION_KEY, request_language
from qamqor.kiosk import service
from qamqor.kiosk.errors import CodeError, NoCodeSentError
from qamqor.kiosk.receipt import Receipt, receipt_lines, ticket_pdf
from qamqor.kiosk.screen import (
    CODE_KEY,
    CODE_KEYS,
    CODE_SHOWN_KEY,
    DECOY_CODE,
    DECOY_KEY,
    DEVICE_COOKIE,
    MESSAGE_KEY,
    RESIDENT_KEY,
    SEEN_KEY,
    STATIC_DIR,
    KioskDevice,
    audit_kiosk,
    end_resident_session,
    error_text,
    page,
    redirect,
    resident_id_of,
    screen_context,
    zone_of,
)
from qamqor.kiosk.sms import gateway_for
from qamqor.registry import service as registry
from qamqor.registry.enums import Specialty
from qamqor.registry.errors import InvalidIINError, ResidentNotFoundError
from qamqor.registry.iin import IIN
from qamqor.registry.models import Facility
from qamqor.scheduling import screening
from qamqor.scheduling import service as scheduling
from qamqor.scheduling.enums import ScreeningState
from qamqor.scheduling.errors import AppointmentStateError
from qamqor.scheduling.models import Appointment, QueueTicket, Slot

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/kiosk", tags=["kiosk"], include_in_schema=False)
#: Specialties a resident may book at the kiosk (others need a referral).
BOOKABLE = [
    Specialty.GENERAL_PRACTITIONER,
    Specialty.THERAPIST,
    Specialty.PEDIATRICIAN,
    Specialty.GYNECOLOGIST,
    Specialty.MAMMOGRAPHY,
]
#: Booked at the resident's own polyclinic; the others anywhere in its district.
PRIMARY_CARE = {Specialty.GENERAL_PRACTITIONER, Specialty.THERAPIST, Specialty.PEDIATRICIAN}


# Device activation ---------------------------------------------------------------------------
@router.get("/activate")
def activate_form(request: Request, runtime: RuntimeDep) -> Response:
    return page(request, runtime, "activate.html")


@router.post("/activate", dependencies=[CsrfProtected])
def activate(
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """A technician enters the device token once (``qamqor kiosk add`` printed it)."""
    device = None
    try:
        user = user_for_token(session, token.strip())
        if user.role == Role.KIOSK:
            device = service.device_of(session, user.id)
    except AuthenticationError:
        pass
    if device is None:
        return page(
            request,
            runtime,
            "activate.html",
            status_code=403,
            error=gettext(request_language(request), N_("This is not a kiosk device token.")),
        )
    audit.record(
        session,
        actor=device.username,
        action="kiosk_activated",
        object_type="kiosk",
        object_id=device.username,
        source=f"web:{request.client.host if request.client else 'unknown'}",
    )
    session.commit()
    response = redirect("/kiosk")
    response.set_cookie(
        DEVICE_COOKIE,
        token.strip(),
        max_age=400 * 24 * 3600,
        httponly=True,
        samesite="strict",
        secure=runtime.settings.environment == "production",
    )
    return response


# The resident's way in -----------------------------------------------------------------------
@router.get("")
def start(request: Request, runtime: RuntimeDep, device: KioskDevice) -> Response:
    if resident_id_of(request, runtime) is not None:
        return redirect("/kiosk/home")
    request.session.pop(CODE_KEY, None)
    return page(request, runtime, "start.html")


@router.post("/language", dependencies=[CsrfProtected])
def choose_language(
    request: Request,
    lang: Annotated[str, Form(max_length=8)],
    next: Annotated[str, Form(max_length=200)] = "/kiosk",
) -> Response:
    """The screen's language; also before the device is activated (the activation screen
    offers the switch too), so no device is required: a language tells nothing."""
    if lang not in LANGUAGES:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "unknown language")
    request.session[LANGUAGE_SESSION_KEY] = lang
    target = next if next.startswith("/kiosk") and "//" not in next else "/kiosk"
    return redirect(target)


@router.get("/end")
def end(request: Request) -> Response:
    """Ends the resident's session (the "Finish" button and the idle timer come here)."""
    end_resident_session(request)
    return redirect("/kiosk")


def _start_again(request: Request, runtime: Runtime, error: str, iin: str = "") -> Response:
    """The IIN screen with ``error``; the digits typed stay on the keypad's display, so a
    typo is one backspace away, not twelve digits."""
    typed = "".join(ch for ch in iin if ch in "0123456789")[:12]
    return page(request, runtime, "start.html", status_code=422, error=error, iin=typed)


@router.post("/identify", dependencies=[CsrfProtected])
def identify(
    request: Request,
    runtime: RuntimeDep,
    device: KioskDevice,
    iin: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Send a one-time code to the resident's phone on record.

    The answer is the same whether or not the IIN is registered (or has a phone, or has had
    its codes for this quarter of an hour): the code screen, whose codes simply never match
    when none was sent. The kiosk tells no passer-by who is registered. A typo in the IIN is
    said at once: its check digit tells nothing about anyone.
    """
    language = request_language(request)
    try:
        IIN.parse(iin)
    except InvalidIINError as exc:
        return _start_again(request, runtime, error_text(request, exc), iin)
    sent = None
    try:
        with write_session(runtime.session_factory) as session:
            resident = registry.resident_by_iin(session, iin)
            sent = service.send_code(
                session,
                resident=resident,
                kiosk=device.username,
                settings=runtime.settings,
                gateway=gateway_for(runtime.settings),
                language=language,
            )
            audit_kiosk(session, request, device, "kiosk_code_sent", "resident", resident.id)
    except (ResidentNotFoundError, NoCodeSentError):
        logger.info("kiosk %s: no code sent (unregistered IIN, or none due)", device.username)
    except QamqorError as exc:  # the SMS gateway did not take it: try again
        return _start_again(request, runtime, error_text(request, exc), iin)
    for key in CODE_KEYS:
        request.session.pop(key, None)
    if sent is None:
        request.session[CODE_KEY] = DECOY_CODE
        request.session[DECOY_KEY] = [time.time() + runtime.settings.otp_ttl_seconds, 0]
    else:
        request.session[CODE_KEY] = sent.code_id
        request.session[CODE_SHOWN_KEY] = sent.shown_code or ""
    return redirect("/kiosk/code")


def _codepage(
    request: Request, runtime: Runtime, status_code: int = 200, error: str = ""
) -> Response:
    return page(
        request,
        runtime,
        "code.html",
        status_code=status_code,
        error=error,
        demo_code=request.session.get(CODE_SHOWN_KEY, ""),
    )


@router.get("/code")
def code_form(request: Request, runtime: RuntimeDep, device: KioskDevice) -> Response:
    if CODE_KEY not in request.session:
        return redirect("/kiosk")
    return _codepage(request, runtime)


def _code_refused(request: Request, runtime: Runtime, problem: str) -> Response:
    """A wrong code: try again on the code screen; an expired or used-up one: start again."""
    error = gettext(request_language(request), problem)
    if problem == N_("The code is wrong. Please check the SMS and try again."):
        return _codepage(request, runtime, 422, error)
    for key in CODE_KEYS:
        request.session.pop(key, None)
    return page(request, runtime, "start.html", status_code=422, error=error)


@router.post("/verify", dependencies=[CsrfProtected])
def verify(
    request: Request,
    runtime: RuntimeDep,
    device: KioskDevice,
    code: Annotated[str, Form(max_length=12)] = "",
) -> Response:
    code_id = request.session.get(CODE_KEY)
    if code_id is None:
        return redirect("/kiosk")
    if int(code_id) == DECOY_CODE:  # no code was sent: every entry is wrong, as for a real one
        expires, attempts = request.session.get(DECOY_KEY) or [0.0, 0]
        attempts, problem = service.judge_code(
            expires_at=datetime.fromtimestamp(float(expires), UTC),
            attempts=int(attempts),
            right=False,
            settings=runtime.settings,
            now=utcnow(),
        )
        request.session[DECOY_KEY] = [expires, attempts]
        return _code_refused(request, runtime, problem or "")
    with write_session(runtime.session_factory) as session:  # reads the code, then counts
        try:
            resident_id = service.verify_code(
                session, code_id=int(code_id), code=code, settings=runtime.settings
            )
        except CodeError as exc:
            session.commit()  # the failed attempt counts
            return _code_refused(request, runtime, exc.message)
        audit_kiosk(session, request, device, "kiosk_sign_in", "resident", resident_id)
        session.commit()
    for key in CODE_KEYS:
        request.session.pop(key, None)
    request.session[RESIDENT_KEY] = resident_id
    request.session[SEEN_KEY] = time.time()
    return redirect("/kiosk/home")


# The resident's screens ----------------------------------------------------------------------
def _require_resident(request: Request, runtime: Runtime) -> int:
    resident_id = resident_id_of(request, runtime)
    if resident_id is None:
        raise HTTPException(status.HTTP_303_SEE_OTHER, "sign in", {"Location": "/kiosk"})
    return resident_id


def _home(
    request: Request,
    runtime: Runtime,
    session: Session,
    resident_id: int,
    device: service.Device,
    **values: Any,
) -> Response:
    resident = registry.get_resident(session, resident_id)
    attachment = registry.current_attachment(session, resident_id)
    facility = session.get(Facility, attachment.facility_id) if attachment else None
    appointments = scheduling.resident_appointments(session, resident_id=resident_id)
    now = utcnow()
    today = now.astimezone(zone_of(runtime)).date()
    due = [
        s
        for s in screening.resident_status(
            session, resident=resident, programs=runtime.settings.screening_programs, on=today
        )
        if s.state in (ScreeningState.DUE, ScreeningState.INVITED)
    ]
    begin_write(session)  # the reads are done; SQLite: see begin_write
    audit_kiosk(session, request, device, "kiosk_view", "resident", resident_id)
    session.commit()
    check_in_open = {
        a.id
        for a in appointments
        if a.status == "booked"
        and a.start - scheduling.CHECK_IN_EARLY <= now < a.end
        and a.facility_id == device.facility_id
    }
    return page(
        request,
        runtime,
        "home.html",
        given_name=resident.given_name,
        facility=facility,
        appointments=appointments,
        check_in_open=check_in_open,
        screenings=due,
        specialties=[s.value for s in BOOKABLE],
        **values,
    )


@router.get("/home")
def home(
    request: Request, session: DbSession, runtime: RuntimeDep, device: KioskDevice
) -> Response:
    resident_id = _require_resident(request, runtime)
    message = request.session.pop(MESSAGE_KEY, "")
    return _home(
        request,
        runtime,
        session,
        resident_id,
        device,
        message=gettext(request_language(request), message) if message else "",
    )


def _search_slots(
    session: Session, resident_id: int, specialty: Specialty, limit: int = 8
) -> list[scheduling.FreeSlot]:
    attachment = registry.current_attachment(session, resident_id)
    if attachment is None:
        return scheduling.free_slots(session, specialty=specialty.value, limit=limit)
    facility = registry.get_facility(session, attachment.facility_id)
    if specialty in PRIMARY_CARE:
        return scheduling.free_slots(
            session, specialty=specialty.value, facility_id=facility.id, limit=limit
        )
    return scheduling.free_slots(
        session, specialty=specialty.value, district_id=facility.district_id, limit=limit
    )


@router.get("/book")
def book_form(
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    device: KioskDevice,
    specialty: str = "",
    replace: DbId | None = None,
) -> Response:
    resident_id = _require_resident(request, runtime)
    known = {s.value: s for s in BOOKABLE}
    if specialty not in known:
        return page(request, runtime, "specialties.html", specialties=list(known))
    replacing = None
    if replace is not None:
        try:
            replacing = scheduling.get_appointment(session, replace, resident_id=resident_id)
        except QamqorError:
            return redirect("/kiosk/home")
    slots = _search_slots(session, resident_id, known[specialty])
    return page(
        request,
        runtime,
        "slots.html",
        specialty=specialty,
        slots=slots,
        replacing=replacing.id if replacing else None,
    )


def _after_change(request: Request, message: str) -> Response:
    request.session[MESSAGE_KEY] = message
    return redirect("/kiosk/home")


@router.post("/book", dependencies=[CsrfProtected])
def book(
    request: Request,
    runtime: RuntimeDep,
    device: KioskDevice,
    slot_id: Annotated[DbId, Form()],
    replace: Annotated[DbId | None, Form()] = None,
) -> Response:
    resident_id = _require_resident(request, runtime)
    try:
        with write_session(runtime.session_factory) as session:
            if replace is not None:
                appointment = scheduling.reschedule(
                    session,
                    appointment_id=replace,
                    new_slot_id=slot_id,
                    resident_id=resident_id,
                    actor=device.username,
                    source="kiosk",
                )
                action = "kiosk_reschedule"
            else:
                appointment = scheduling.book(
                    session,
                    slot_id=slot_id,
                    resident_id=resident_id,
                    actor=device.username,
                    source="kiosk",
                )
                action = "kiosk_book"
            audit_kiosk(session, request, device, action, "appointment", appointment.id)
    except QamqorError as exc:
        with runtime.session_factory() as session:
            known = {s.value: s for s in BOOKABLE}
            slot_row = session.get(Slot, slot_id)
            code = slot_row.specialty if slot_row else ""
            slots = _search_slots(session, resident_id, known[code]) if code in known else []
        return page(
            request,
            runtime,
            "slots.html",
            status_code=409 if exc.http_status == 409 else 422,
            specialty=code,
            slots=slots,
            replacing=replace,
            error=error_text(request, exc),
        )
    logger.info("kiosk %s booked appointment %d", device.username, appointment.id)
    return _after_change(
        request,
        N_("Your appointment has been moved.") if replace else N_("Your appointment is booked."),
    )


@router.post("/cancel", dependencies=[CsrfProtected])
def cancel(
    request: Request,
    runtime: RuntimeDep,
    device: KioskDevice,
    appointment_id: Annotated[DbId, Form()],
) -> Response:
    resident_id = _require_resident(request, runtime)
    try:
        with write_session(runtime.session_factory) as session:
            scheduling.cancel(session, appointment_id=appointment_id, resident_id=resident_id)
            audit_kiosk(session, request, device, "kiosk_cancel", "appointment", appointment_id)
    except QamqorError as exc:
        request.session[MESSAGE_KEY] = exc.message
        return redirect("/kiosk/home")
    return _after_change(request, N_("Your appointment is cancelled."))


@router.post("/checkin", dependencies=[CsrfProtected])
def check_in(
    request: Request,
    runtime: RuntimeDep,
    device: KioskDevice,
    appointment_id: Annotated[DbId, Form()],
) -> Response:
    resident_id = _require_resident(request, runtime)
    try:
        with write_session(runtime.session_factory) as session:
            appointment = scheduling.get_appointment(
                session, appointment_id, resident_id=resident_id
            )
            if appointment.facility_id != device.facility_id:
                raise AppointmentStateError(
                    N_("Please check in at a kiosk of the polyclinic of your appointment.")
                )
            ticket = scheduling.check_in(
                session, appointment_id=appointment_id, resident_id=resident_id
            )
            audit_kiosk(session, request, device, "kiosk_check_in", "appointment", appointment_id)
            ticket_id = ticket.id
    except QamqorError as exc:
        request.session[MESSAGE_KEY] = exc.message
        return redirect("/kiosk/home")
    return redirect(f"/kiosk/ticket/{ticket_id}")


def _resident_ticket(
    session: Session, ticket_id: int, resident_id: int
) -> tuple[QueueTicket, Appointment, Facility] | None:
    row = session.execute(
        select(QueueTicket, Appointment, Facility)
        .join(Appointment, Appointment.id == QueueTicket.appointment_id)
        .join(Facility, Facility.id == QueueTicket.facility_id)
        .where(QueueTicket.id == ticket_id, Appointment.resident_id == resident_id)
    ).first()
    return (row[0], row[1], row[2]) if row else None


@router.get("/ticket/{ticket_id}")
def ticketpage(
    ticket_id: DbId, request: Request, session: DbSession, runtime: RuntimeDep, device: KioskDevice
) -> Response:
    resident_id = _require_resident(request, runtime)
    found = _resident_ticket(session, ticket_id, resident_id)
    if found is None:
        return redirect("/kiosk/home")
    ticket = found[0]
    ahead = session.scalar(
        select(func.count(QueueTicket.id)).where(
            QueueTicket.facility_id == ticket.facility_id,
            QueueTicket.day == ticket.day,
            QueueTicket.status == "waiting",
            QueueTicket.number < ticket.number,
        )
    )
    return page(
        request,
        runtime,
        "ticket.html",
        ticket_id=ticket.id,
        code=ticket.code,
        room=ticket.room,
        ahead=int(ahead or 0),
    )


def _receipt(
    request: Request, runtime: Runtime, session: Session, ticket_id: int
) -> tuple[Receipt, str]:
    """The signed-in resident's ticket as a receipt (``HTTPException`` 404 if not theirs)."""
    resident_id = _require_resident(request, runtime)
    found = _resident_ticket(session, ticket_id, resident_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such ticket")
    ticket, appointment, facility = found
    context = screen_context(request, runtime)
    receipt = Receipt(
        facility=context["facility_name"](facility.name, facility.name_ru),
        code=ticket.code,
        room=ticket.room,
        specialty=context["specialty_name"](ticket.specialty),
        appointment_time=context["when"](appointment.start),
        issued_at=ticket.issued_at,
        issued_text=context["when"](ticket.issued_at),
    )
    return receipt, request_language(request)


@router.get("/ticket/{ticket_id}/receipt.pdf")
def ticket_receipt(
    ticket_id: DbId, request: Request, session: DbSession, runtime: RuntimeDep, device: KioskDevice
) -> Response:
    """The signed-in resident's ticket as a PDF for an 80 mm printer."""
    receipt, language = _receipt(request, runtime, session, ticket_id)
    return Response(
        ticket_pdf(receipt, language=language),
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="ticket-{receipt.code}.pdf"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/ticket/{ticket_id}/print")
def ticket_print(
    ticket_id: DbId, request: Request, session: DbSession, runtime: RuntimeDep, device: KioskDevice
) -> Response:
    """The ticket as an 80 mm page, loaded into the ticket screen's hidden print frame, which
    prints it: the kiosk never leaves its own page (a PDF viewer would strand it)."""
    receipt, language = _receipt(request, runtime, session, ticket_id)
    response = page(
        request,
        runtime,
        "receipt.html",
        receipt=receipt,
        lines=receipt_lines(receipt, language=language),
    )
    # Framed by the kiosk's own ticket screen only.
    policy = response.headers["Content-Security-Policy"]
    response.headers["Content-Security-Policy"] = policy.replace(
        "frame-ancestors 'none'", "frame-ancestors 'self'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


# Walk-in tickets and the hall display --------------------------------------------------------
@router.get("/hall")
def hall(
    request: Request, session: DbSession, runtime: RuntimeDep, device: KioskDevice
) -> Response:
    facility = registry.get_facility(session, device.facility_id)
    return page(request, runtime, "hall.html", facility=facility)


@router.get("/hall/called.json")
def hall_called(session: DbSession, device: KioskDevice) -> JSONResponse:
    """Today's called tickets (numbers and rooms only), the latest first; polled by the display."""
    called = scheduling.called_tickets(session, facility_id=device.facility_id)
    waiting = scheduling.waiting_count(session, facility_id=device.facility_id)
    return JSONResponse(
        {
            "called": [{"code": t.code, "room": t.room} for t in called],
            "waiting": waiting,
        },
        headers={"Cache-Control": "no-store"},
    )


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    path = STATIC_DIR / name
    if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    return FileResponse(
        path,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


routers = [router]
