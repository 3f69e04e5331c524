"""What every kiosk screen shares: the device and resident identities, the session keys,
and rendering in the screen's language."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response

from qamqor.core.auth import Role, user_for_token
from qamqor.core.errors import AuthenticationError, QamqorError
from qamqor.core.i18n import gettext
from qamqor.core.runtime import Runtime
from qamqor.core.timezone import local_time, region_zone
from qamqor.http.deps import DbSession
from qamqor.http.templating import LANGUAGE_SESSION_KEY, render, request_language
from qamqor.kiosk import service
from qamqor.registry import SPECIALTY_NAMES, Specialty

DEVICE_COOKIE = "qamqor_kiosk_device"
RESIDENT_KEY = "kiosk_resident"
SEEN_KEY = "kiosk_seen"
CODE_KEY = "kiosk_code"
CODE_SHOWN_KEY = "kiosk_demo_code"
#: A code the kiosk pretends to have sent (an unregistered IIN): [expires at, attempts].
DECOY_KEY = "kiosk_decoy"
#: ``CODE_KEY`` of such a code (no row has id 0).
DECOY_CODE = 0
MESSAGE_KEY = "kiosk_message"
#: What a code entry keeps in the session until it ends.
CODE_KEYS = (CODE_KEY, CODE_SHOWN_KEY, DECOY_KEY)
STATIC_DIR = Path(__file__).resolve().parent / "static"


# Identities ----------------------------------------------------------------------------------
def kiosk_device(request: Request, session: DbSession) -> service.Device:
    """The kiosk device making the request, or a redirect to the activation page."""
    token = request.cookies.get(DEVICE_COOKIE, "")
    device = None
    if token:
        try:
            user = user_for_token(session, token)
        except AuthenticationError:
            user = None
        if user is not None and user.role == Role.KIOSK:
            device = service.device_of(session, user.id)
    if device is None:
        raise HTTPException(
            status.HTTP_303_SEE_OTHER, "activate this kiosk", {"Location": "/kiosk/activate"}
        )
    return device


kiosk_device.allowed_roles = frozenset({Role.KIOSK})  # type: ignore[attr-defined]  # navigation
KioskDevice = Annotated[service.Device, Depends(kiosk_device)]


def resident_id_of(request: Request, runtime: Runtime) -> int | None:
    resident_id = request.session.get(RESIDENT_KEY)
    if resident_id is None:
        return None
    if time.time() - float(request.session.get(SEEN_KEY, 0)) > runtime.settings.kiosk_idle_seconds:
        end_resident_session(request)
        return None
    request.session[SEEN_KEY] = time.time()
    return int(resident_id)


def end_resident_session(request: Request) -> None:
    for key in (RESIDENT_KEY, SEEN_KEY, MESSAGE_KEY, *CODE_KEYS):
        request.session.pop(key, None)
    request.session[LANGUAGE_SESSION_KEY] = "kk"  # the next person starts in Kazakh


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


# Presentation helpers ------------------------------------------------------------------------
def zone_of(runtime: Runtime) -> ZoneInfo:
    """The zone the kiosk shows times in: the region's."""
    return region_zone(runtime.settings)


def screen_context(request: Request, runtime: Runtime, **values: Any) -> dict[str, Any]:
    zone = zone_of(runtime)
    language = request_language(request)

    def when(moment: datetime) -> str:
        return local_time(moment, zone).strftime("%d.%m.%Y %H:%M")

    def clock(moment: datetime) -> str:
        return local_time(moment, zone).strftime("%H:%M")

    def facility_name(name: str, name_ru: str) -> str:
        return name_ru if language != "kk" and name_ru else name

    known = {s.value: s for s in Specialty}

    def specialty_name(code: str) -> str:
        return gettext(language, SPECIALTY_NAMES[known[code]]) if code in known else code

    values.setdefault("error", "")
    values.setdefault("message", "")
    values.setdefault("signed_in", RESIDENT_KEY in request.session)
    return {
        "when": when,
        "clock": clock,
        "facility_name": facility_name,
        "specialty_name": specialty_name,
        "idle_seconds": runtime.settings.kiosk_idle_seconds,
        "kiosk_static": kiosk_static_url,
        **values,
    }


def kiosk_static_url(name: str) -> str:
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return f"/kiosk/static/{name}?v={digest}"


def page(
    request: Request, runtime: Runtime, template: str, status_code: int = 200, **values: Any
) -> Response:
    return render(
        request,
        f"kiosk/{template}",
        screen_context(request, runtime, **values),
        status_code=status_code,
    )


def error_text(request: Request, exc: QamqorError) -> str:
    return gettext(request_language(request), exc.message)
