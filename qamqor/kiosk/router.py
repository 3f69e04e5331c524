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
from sqlalchemy.orm import Session

from qamqor.core.db import utcnow
from qamqor.core.errors import QamqorError
from qamqor.core.i18n import LANGUAGES, N_, gettext
from qamqor.core.runtime import Runtime
from qamqor.http.csrf import CsrfProtected
from qamqor.http.deps import DbSession, RuntimeDep
from qamqor.http.errors import status_for
from qamqor.http.params import DbId
from qamqor.http.templating import LANGUAGE_SESSION_KEY, request_language
from qamqor.kiosk import service
from qamqor.kiosk.errors import CodeError
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
    end_resident_session,
    error_text,
    page,
    redirect,
    resident_id_of,
    screen_context,
)
from qamqor.kiosk.sms import gateway_for

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/kiosk", tags=["kiosk"], include_in_schema=False)


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
    host = request.client.host if request.client else "unknown"
    device = service.activate(session, token=token.strip(), host=host)
    if device is None:
        return page(
            request,
            runtime,
            "activate.html",
            status_code=403,
            error=gettext(request_language(request), N_("This is not a kiosk device token.")),
        )
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
    try:
        sent = service.ask_for_code(
            runtime.session_factory,
            iin=iin,
            device=device,
            settings=runtime.settings,
            gateway=gateway_for(runtime.settings),
            language=request_language(request),
        )
    except QamqorError as exc:  # a typo in the IIN, or the SMS gateway did not take it
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
    try:
        resident_id = service.sign_in(
            runtime.session_factory,
            code_id=int(code_id),
            code=code,
            device=device,
            settings=runtime.settings,
        )
    except CodeError as exc:
        return _code_refused(request, runtime, exc.message)
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
    shown = service.home(
        session, resident_id=resident_id, device=device, settings=runtime.settings, now=utcnow()
    )
    return page(
        request,
        runtime,
        "home.html",
        given_name=shown.given_name,
        facility=shown.facility,
        appointments=shown.appointments,
        check_in_open=shown.check_in_open,
        screenings=shown.screenings,
        specialties=[s.value for s in service.BOOKABLE],
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
    chosen = service.bookable(specialty)
    if chosen is None:
        return page(
            request, runtime, "specialties.html", specialties=[s.value for s in service.BOOKABLE]
        )
    replacing = None
    if replace is not None:
        try:
            replacing = service.own_appointment_id(
                session, appointment_id=replace, resident_id=resident_id
            )
        except QamqorError:
            return redirect("/kiosk/home")
    slots = service.search_slots(session, resident_id=resident_id, specialty=chosen)
    return page(
        request,
        runtime,
        "slots.html",
        specialty=specialty,
        slots=slots,
        replacing=replacing,
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
        appointment_id = service.book(
            runtime.session_factory,
            slot_id=slot_id,
            resident_id=resident_id,
            device=device,
            replace=replace,
        )
    except QamqorError as exc:
        with runtime.session_factory() as session:
            code, slots = service.slots_like(session, slot_id=slot_id, resident_id=resident_id)
        return page(
            request,
            runtime,
            "slots.html",
            status_code=409 if status_for(exc) == 409 else 422,
            specialty=code,
            slots=slots,
            replacing=replace,
            error=error_text(request, exc),
        )
    logger.info("kiosk %s booked appointment %d", device.username, appointment_id)
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
        service.cancel(
            runtime.session_factory,
            appointment_id=appointment_id,
            resident_id=resident_id,
            device=device,
        )
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
        ticket_id = service.check_in(
            runtime.session_factory,
            appointment_id=appointment_id,
            resident_id=resident_id,
            device=device,
        )
    except QamqorError as exc:
        request.session[MESSAGE_KEY] = exc.message
        return redirect("/kiosk/home")
    return redirect(f"/kiosk/ticket/{ticket_id}")


@router.get("/ticket/{ticket_id}")
def ticketpage(
    ticket_id: DbId, request: Request, session: DbSession, runtime: RuntimeDep, device: KioskDevice
) -> Response:
    resident_id = _require_resident(request, runtime)
    ticket = service.resident_ticket(session, ticket_id=ticket_id, resident_id=resident_id)
    if ticket is None:
        return redirect("/kiosk/home")
    return page(
        request,
        runtime,
        "ticket.html",
        ticket_id=ticket.id,
        code=ticket.code,
        room=ticket.room,
        ahead=ticket.ahead,
    )


def _receipt(
    request: Request, runtime: Runtime, session: Session, ticket_id: int
) -> tuple[Receipt, str]:
    """The signed-in resident's ticket as a receipt (``HTTPException`` 404 if not theirs)."""
    resident_id = _require_resident(request, runtime)
    ticket = service.resident_ticket(session, ticket_id=ticket_id, resident_id=resident_id)
    if ticket is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such ticket")
    context = screen_context(request, runtime)
    receipt = Receipt(
        facility=context["facility_name"](ticket.facility_name, ticket.facility_name_ru),
        code=ticket.code,
        room=ticket.room,
        specialty=context["specialty_name"](ticket.specialty),
        appointment_time=context["when"](ticket.appointment_start),
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
    facility = service.facility(session, device.facility_id)
    return page(request, runtime, "hall.html", facility=facility)


@router.get("/hall/called.json")
def hall_called(session: DbSession, device: KioskDevice) -> JSONResponse:
    """Today's called tickets (numbers and rooms only), the latest first; polled by the display."""
    shown = service.hall(session, facility_id=device.facility_id)
    return JSONResponse(
        {
            "called": [{"code": t.code, "room": t.room} for t in shown.called],
            "waiting": shown.waiting,
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
