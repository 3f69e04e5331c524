"""The AI API (for the worklist and viewers) and the AI column of the studies page.

Every route needs a signed-in user with an imaging role; every answer about a study is written
to the audit trail (AI results are patient data).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.orm import Session

from qamqor.ai import service
from qamqor.ai.enums import JobStatus, Priority
from qamqor.ai.schemas import FailureOut, StudyDetailOut, StudyOut
from qamqor.core.auth import Role
from qamqor.core.i18n import N_, Message, messages_from_json
from qamqor.http.deps import DbSession, Principal, require_role
from qamqor.http.pages import client_source
from qamqor.http.params import Offset, StrictInt
from qamqor.pacs import StudyBadge, register_study_list_extension

router = APIRouter(prefix="/api/ai", tags=["ai"])

ImagingUser = Annotated[
    Principal, Depends(require_role(Role.RADIOLOGIST, Role.TECHNOLOGIST, Role.SERVICE))
]
AdminUser = Annotated[Principal, Depends(require_role(Role.ADMIN))]

#: Badge labels (message ids, translated on the page).
_LABELS = {
    Priority.HIGH.value: N_("High"),
    Priority.MEDIUM.value: N_("Medium"),
    Priority.LOW.value: N_("Low"),
    Priority.NOT_ANALYSED.value: N_("Not analysed"),
}


def _viewer(request: Request, user: Principal) -> service.Viewer:
    return service.Viewer(user.username, client_source(request))


@router.get("/studies", response_model=list[StudyOut])
def list_studies(
    request: Request,
    session: DbSession,
    user: ImagingUser,
    order: Literal["priority", "recent"] = "priority",
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500), StrictInt] = 50,
    offset: Offset = 0,
) -> list[StudyOut]:
    """Studies with their AI triage: most suspicious first (``order=priority``) or the latest
    results first (``order=recent``); ``status`` filters (``failed`` lists what needs a look)."""
    rows = service.studies_seen_by(
        session,
        _viewer(request, user),
        order=order,
        status=status.value if status else None,
        limit=limit,
        offset=offset,
    )
    return [StudyOut.of(row) for row in rows]


@router.get("/studies/{study_instance_uid}", response_model=StudyDetailOut)
def get_study(
    request: Request, session: DbSession, user: ImagingUser, study_instance_uid: str
) -> StudyDetailOut:
    """One study's AI result: priority, score, each image's score, findings (x, y in the
    image's pixels) and the UIDs of the SR and overlays stored in the archive."""
    return StudyDetailOut.of(
        service.study_seen_by(session, _viewer(request, user), study_instance_uid)
    )


@router.get("/failures", response_model=list[FailureOut])
def list_failures(session: DbSession, user: AdminUser) -> list[FailureOut]:
    """Analyses that failed for good, with the reason (no patient data in them)."""
    return [
        FailureOut(
            study_instance_uid=f.arguments,
            error_type=f.error_type,
            reason=f.reason,
            failed_at=f.failed_at,
        )
        for f in service.failures(session)
    ]


class PriorityColumn:
    """The AI priority on the studies page, and the order it sorts by (most suspicious first)."""

    name = "priority"
    header = N_("AI priority")
    sort_label = N_("AI priority")

    def order_by(self) -> list[Any]:
        return service.priority_order()

    def badges(self, session: Session, study_uids: list[str]) -> dict[str, StudyBadge]:
        found: dict[str, StudyBadge] = {}
        for uid, row in service.rows_for(session, study_uids).items():
            if row.priority in _LABELS:
                title: str | list[Message] = (
                    f"{row.score:.2f} · {row.model}"
                    if row.score is not None
                    else messages_from_json(row.reason_messages) or row.reason[:300]
                )
                found[uid] = StudyBadge(_LABELS[row.priority], row.priority, title)
            elif row.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                found[uid] = StudyBadge(N_("Analysing…"), "pending")
        return found


register_study_list_extension(PriorityColumn())

routers = [router]
