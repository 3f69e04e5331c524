"""The reading pages: worklist, viewer with the report form, report PDFs; the viewer's JSON.

Only radiologists (and admins) get in. Every study opened or listed is in the audit trail;
every state change needs the session's CSRF token.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from qamqor.core.auth import Role
from qamqor.core.db import utcnow
from qamqor.core.errors import QamqorError
from qamqor.core.i18n import N_
from qamqor.core.timezone import local_time, region_zone
from qamqor.http.csrf import CsrfProtected
from qamqor.http.deps import DbSession, Principal, RuntimeDep, require_role
from qamqor.http.errors import status_for
from qamqor.http.pages import client_source, require_page_role, safe_next
from qamqor.http.params import DbId
from qamqor.http.templating import render, request_language
from qamqor.pacs import ArchiveService
from qamqor.reading import service, worklist
from qamqor.reading.enums import (
    Agreement,
    BiRads,
    BreastFindingType,
    BreastLocation,
    ChestFindingType,
    Density,
    FollowUp,
    LungZone,
    ReportStatus,
    Side,
    Template,
    Urgency,
    suggested_follow_up,
)
from qamqor.reading.errors import InvalidReportError, ReadingError
from qamqor.reading.schemas import ReportContent

router = APIRouter(prefix="/reading", tags=["reading"], include_in_schema=False)
api = APIRouter(prefix="/reading/api", tags=["reading"])

ReaderPage = Annotated[Principal, Depends(require_page_role(Role.RADIOLOGIST))]
ReaderApi = Annotated[Principal, Depends(require_role(Role.RADIOLOGIST))]

STATIC_DIR: Final = Path(__file__).resolve().parent / "static"
PAGE_SIZE: Final = 50
FINDING_ROWS: Final = 3


@lru_cache(maxsize=16)
def reading_static_url(name: str) -> str:
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return f"/reading/static/{name}?v={digest}"


def _actor(request: Request, session: Session, user: Principal) -> service.Actor:
    return service.actor(
        session, user_id=user.id, username=user.username, source=client_source(request)
    )


def _int(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


# The worklist ------------------------------------------------------------------------------------
@router.get("")
def worklist_page(
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ReaderPage,
    q: str = "",
    modality: str = "",
    facility: str = "",
    date_from: str = "",
    date_to: str = "",
    ai: str = "",
    status: str = "open",
    page: str = "1",
) -> Response:
    """Open studies, most suspicious first (:mod:`qamqor.reading.worklist`)."""
    typed = worklist.WorklistFilter(q, modality, facility, date_from, date_to, ai, status)
    error = ""
    page_number = min(max(_int(page, 1), 1), 100_000)
    try:
        filters = typed.normalised()
    except ValueError:
        error = N_("Dates are written as YYYY-MM-DD.")
        filters = worklist.WorklistFilter(q=typed.q).normalised()
    now = utcnow()
    result = service.open_worklist(
        session,
        filters,
        by=_actor(request, session, user),
        now=now,
        page=page_number,
        size=PAGE_SIZE,
    )
    query = {k: v for k, v in vars(typed).items() if v and not (k == "status" and v == "open")}

    def page_url(number: int) -> str:
        return "/reading?" + urlencode({**query, "page": str(number)})

    return render(
        request,
        "reading/worklist.html",
        {
            "filters": typed,
            "rows": result.rows,
            "facilities": result.facilities,
            "modalities": result.modalities,
            "error": error,
            "page": page_number,
            "now": now,
            "previous_url": page_url(page_number - 1) if page_number > 1 else "",
            "next_url": page_url(page_number + 1) if result.has_next else "",
            "back": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            "reading_static_url": reading_static_url,
            "tz": region_zone(runtime.settings),
            "local_time": local_time,
            "changes": service.worklist_changes(),
        },
    )


@api.get("/worklist/changes")
def worklist_changes(user: ReaderApi) -> JSONResponse:
    """What the worklist page polls: a token that changes when the worklist may have (a new
    AI priority, a signed report, a claim); the page reloads when it differs."""
    return JSONResponse(
        {"changes": service.worklist_changes()}, headers={"Cache-Control": "no-store"}
    )


# Claims and urgency ----------------------------------------------------------------------------
def _back(next_path: str, default: str) -> RedirectResponse:
    return RedirectResponse(safe_next(next_path, default), status_code=status.HTTP_303_SEE_OTHER)


@router.post("/studies/{study}/claim", dependencies=[CsrfProtected])
def claim_study(
    study: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ReaderPage,
    take_over: Annotated[str, Form(max_length=8)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    claimed = service.claim_study(
        session,
        study_instance_uid=study,
        by=_actor(request, session, user),
        minutes=runtime.settings.reading_claim_minutes,
        take_over=take_over == "1",
        events=runtime.events,
    )
    if not claimed:
        return _back(next, "/reading")
    return _back(next, f"/reading/studies/{study}")


@router.post("/studies/{study}/release", dependencies=[CsrfProtected])
def release_study(
    study: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ReaderPage,
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    service.release_study(
        session,
        study_instance_uid=study,
        by=_actor(request, session, user),
        events=runtime.events,
    )
    return _back(next, "/reading")


@router.post("/studies/{study}/urgency", dependencies=[CsrfProtected])
def set_urgency(
    study: str,
    request: Request,
    session: DbSession,
    user: ReaderPage,
    urgency: Annotated[int, Form(ge=0, le=2)],
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    service.change_urgency(
        session,
        study_instance_uid=study,
        urgency=Urgency(urgency),
        by=_actor(request, session, user),
    )
    return _back(next, "/reading")


@api.post("/studies/{study}/claim", dependencies=[CsrfProtected])
def renew_claim(
    study: str, request: Request, session: DbSession, runtime: RuntimeDep, user: ReaderApi
) -> JSONResponse:
    """The viewer renews its claim while the radiologist works (409 when someone else has it)."""
    actor = _actor(request, session, user)
    expires = service.renew_claim(
        session,
        study_instance_uid=study,
        by=actor,
        minutes=runtime.settings.reading_claim_minutes,
    )
    return JSONResponse(
        {"claimed_by": actor.username, "expires_at": expires.isoformat() if expires else None}
    )


# The viewer --------------------------------------------------------------------------------------
def viewer_data(view: service.StudyView) -> dict[str, Any]:
    """What the viewer's script needs: images by series, the hanging, the AI marks."""

    def image(i: service.ImageView) -> dict[str, Any]:
        return {
            "study": view.study_instance_uid,
            "series": i.series_instance_uid,
            "sop": i.sop_instance_uid,
            "rows": i.rows,
            "columns": i.columns,
            "frames": i.frames,
            "view": i.view,
            "laterality": i.laterality,
            "hanging": i.hanging_key,
            "ai_score": i.ai_score,
            "overlay": i.overlay_sop_instance_uid,
            "overlay_series": i.overlay_series_instance_uid,
            "findings": i.findings,
        }

    hanging = view.hanging() if view.template is Template.MAMMO else []
    return {
        "study": view.study_instance_uid,
        "template": view.template.value,
        "series": [
            {
                "uid": s.series_instance_uid,
                "number": s.number,
                "modality": s.modality,
                "description": s.description,
                "images": [image(i) for i in s.images],
            }
            for s in view.series
        ],
        "hanging": [image(i) if i else None for i in hanging],
    }


def _form_defaults(content: ReportContent | None, template: Template) -> dict[str, Any]:
    values: dict[str, Any] = {"template": template.value}
    if content is None:
        return values
    values.update(content.model_dump(mode="json"))
    return values


def _viewer(
    request: Request,
    session: Session,
    runtime: Any,
    user: Principal,
    study: str,
    *,
    form: dict[str, Any] | None = None,
    error: str = "",
    error_detail: str = "",
    status_code: int = 200,
) -> Response:
    view = service.study_view(session, study)
    reading = service.reading_row(session, study)
    now = utcnow()
    reports = service.reports_of(session, study)
    latest = reports[0] if reports else None
    editable = latest is None or latest.status == ReportStatus.DRAFT
    content = service.content_of(latest) if latest else None
    claimed_by_other = service.claim_is_live(reading, now) and reading.claimed_by_id != user.id
    ai = view.ai
    suggested = (
        service.suggested_agreement(content, ai.priority) if content and ai is not None else None
    )
    data = viewer_data(view)
    return render(
        request,
        "reading/viewer.html",
        {
            "view": view,
            "reading": reading,
            "ai": ai,
            "priors": service.priors(session, view),
            "reports": reports,
            "latest": latest,
            "editable": editable,
            "form": form or _form_defaults(content, view.template),
            "claimed_by_other": claimed_by_other,
            "error": error,
            "error_detail": error_detail,
            "suggested_agreement": suggested.value if suggested else "",
            "viewer_data": data,
            "finding_rows": FINDING_ROWS,
            "enums": {
                "Density": Density,
                "BiRads": BiRads,
                "Side": Side,
                "BreastLocation": BreastLocation,
                "BreastFindingType": BreastFindingType,
                "ChestFindingType": ChestFindingType,
                "LungZone": LungZone,
                "FollowUp": FollowUp,
                "Agreement": Agreement,
                "Urgency": Urgency,
            },
            "breast_scores": worklist.parse_breast_scores(ai.breast_scores if ai else ""),
            "reading_static_url": reading_static_url,
            "claim_minutes": runtime.settings.reading_claim_minutes,
            "tz": region_zone(runtime.settings),
            "local_time": local_time,
        },
        status_code=status_code,
    )


@router.get("/studies/{study}")
def viewer_page(
    study: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ReaderPage,
) -> Response:
    """The study on screen with its report form; opening it claims it when nobody else has."""
    try:
        service.open_study(
            session,
            study_instance_uid=study,
            by=_actor(request, session, user),
            minutes=runtime.settings.reading_claim_minutes,
            events=runtime.events,
        )
    except ReadingError as exc:
        raise HTTPException(status_for(exc), exc.message) from None
    return _viewer(request, session, runtime, user, study)


@api.get("/studies/{study}")
def study_images(study: str, request: Request, session: DbSession, user: ReaderApi) -> JSONResponse:
    """A study's images for the viewer (priors opened beside the current study)."""
    view = service.prior_view(session, study_instance_uid=study, by=_actor(request, session, user))
    data = viewer_data(view)
    data["study_date"] = view.study_date
    data["description"] = view.description
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


MonitoringApi = Annotated[Principal, Depends(require_role(Role.RADIOLOGIST, Role.HEAD))]


@api.get("/agreement")
def agreement(
    session: DbSession,
    user: MonitoringApi,
    since: Annotated[date | None, Query(description="First day (YYYY-MM-DD), inclusive")] = None,
    until: Annotated[date | None, Query(description="Last day (YYYY-MM-DD), inclusive")] = None,
) -> JSONResponse:
    """Radiologists against the AI, per model: agree / AI missed / AI false alarm (aggregate
    counts for the situational center and for monitoring the models; no patient data)."""
    if since and until and until < since:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "until is before since")
    start = datetime.combine(since, time.min, tzinfo=UTC) if since else None
    end = datetime.combine(until + timedelta(days=1), time.min, tzinfo=UTC) if until else None
    models = service.agreement_summary(session, since=start, until=end)
    return JSONResponse(
        {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "models": models,
        }
    )


# Reports -----------------------------------------------------------------------------------------
def _float(value: str) -> float | None:
    value = value.strip().replace(",", ".")
    if not value:
        return None
    return float(value)


def parse_report_form(form: dict[str, str]) -> ReportContent:
    """The report form as content; ``InvalidReportError`` says which field is wrong."""
    template = form.get("template", "")
    values: dict[str, Any] = {"template": template}
    try:
        if template == Template.MAMMO.value:
            for key in ("density", "birads_right", "birads_left"):
                if form.get(key):
                    values[key] = form[key]
            findings = []
            for i in range(FINDING_ROWS):
                kind = form.get(f"finding{i}_kind", "")
                if not kind:
                    continue
                findings.append(
                    {
                        "kind": kind,
                        "side": form.get(f"finding{i}_side", ""),
                        "location": form.get(f"finding{i}_location", ""),
                        "size_mm": _float(form.get(f"finding{i}_size", "")),
                    }
                )
            values["breast_findings"] = findings
        else:
            chest = []
            for i in range(FINDING_ROWS):
                kind = form.get(f"finding{i}_kind", "")
                if not kind:
                    continue
                chest.append(
                    {
                        "kind": kind,
                        "zone": form.get(f"finding{i}_zone", ""),
                        "size_mm": _float(form.get(f"finding{i}_size", "")),
                    }
                )
            values["chest_findings"] = chest
            if form.get("follow_up"):
                values["follow_up"] = form["follow_up"]
        values["findings_text"] = form.get("findings_text", "")
        values["impression"] = form.get("impression", "")
        return ReportContent.model_validate(values)
    except ValueError as exc:
        fields = []
        if isinstance(exc, ValidationError):
            fields = [".".join(str(p) for p in e["loc"]) for e in exc.errors()]
        raise InvalidReportError(
            "check these fields: " + (", ".join(fields) if fields else "sizes are numbers in mm")
        ) from None


@router.post("/studies/{study}/report", dependencies=[CsrfProtected])
async def save_report(
    study: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ReaderPage,
) -> Response:
    """Save the draft (``action=save``) or save and sign it (``action=sign``)."""
    raw = await request.form()
    form = {k: v for k, v in raw.items() if isinstance(v, str) and len(v) <= 4000}
    action = form.get("action", "save")
    actor = _actor(request, session, user)
    choice = form.get("agreement", "")
    try:
        content = parse_report_form(form)
        service.save_report(
            session,
            archive=runtime.get(ArchiveService),
            study_instance_uid=study,
            by=actor,
            content=content,
            language=request_language(request),
            amendment_reason=form.get("amendment_reason", ""),
            sign_it=action == "sign",
            agreement=Agreement(choice) if choice in set(Agreement) else None,
            events=runtime.events,
            zone=region_zone(runtime.settings),
        )
    except QamqorError as exc:
        message = (
            N_("The report is incomplete or has a mistake; see below.")
            if isinstance(exc, InvalidReportError)
            else N_("The report could not be saved.")
        )
        return _viewer(
            request,
            session,
            runtime,
            user,
            study,
            form=form,
            error=message,
            error_detail=exc.message,
            status_code=min(status_for(exc), 422),
        )
    return RedirectResponse(f"/reading/studies/{study}#report", status_code=303)


@router.post("/studies/{study}/report/amend", dependencies=[CsrfProtected])
def amend_report(
    study: str,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ReaderPage,
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Open a new version of a signed report (the signed one is kept)."""
    reports = service.reports_of(session, study)
    if not reports or reports[0].status != ReportStatus.SIGNED:
        return RedirectResponse(f"/reading/studies/{study}#report", status_code=303)
    if not reason.strip():
        return _viewer(
            request,
            session,
            runtime,
            user,
            study,
            error=N_("Give a reason for the amendment."),
            status_code=422,
        )
    service.amend_report(
        session,
        study_instance_uid=study,
        by=_actor(request, session, user),
        reason=reason,
        language=request_language(request),
    )
    return RedirectResponse(f"/reading/studies/{study}#report", status_code=303)


@router.get("/reports/{report_id}.pdf")
def report_pdf(
    report_id: DbId,
    request: Request,
    session: DbSession,
    runtime: RuntimeDep,
    user: ReaderPage,
) -> Response:
    found = service.signed_report_pdf(
        session,
        archive=runtime.get(ArchiveService),
        report_id=report_id,
        by=_actor(request, session, user),
    )
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no signed report with this number")
    report, data = found
    filename = f"report-{report.id}-v{report.version}.pdf"
    return Response(
        data,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """The reading pages' script and styles (flat folder: no path tricks)."""
    path = STATIC_DIR / name
    if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not found")
    return FileResponse(
        path,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


def follow_up_hint(size_mm: float | None) -> str:
    return suggested_follow_up(size_mm).value


routers = [router, api]
