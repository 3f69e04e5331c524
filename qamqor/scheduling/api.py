"""A small JSON API for the staff's side of the live queue: call the next ticket to a room."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from qamqor.core import audit
from qamqor.core.auth import REGISTRY_ROLES
from qamqor.core.db import write_session
from qamqor.http.deps import Principal, RuntimeDep, require_role
from qamqor.registry import service as registry
from qamqor.scheduling import service

router = APIRouter(prefix="/api/queue", tags=["queue"])
Staff = Annotated[Principal, Depends(require_role(*REGISTRY_ROLES))]


class CallNext(BaseModel):
    room: str = Field(min_length=1, max_length=20)


class Called(BaseModel):
    code: str | None
    room: str


@router.post("/{facility}/call-next")
def call_next(
    facility: Annotated[str, Path(min_length=1, max_length=32)],
    body: CallNext,
    request: Request,
    runtime: RuntimeDep,
    user: Staff,
) -> Called:
    """Call the longest-waiting ticket of today to ``room``; ``code`` is null when nobody waits.
    ``facility`` is the facility's id or its code (``P1``)."""
    with write_session(runtime.session_factory) as session:
        facility_id = registry.facility_by_key(session, facility).id
        ticket = service.call_next(session, facility_id=facility_id, room=body.room)
        if ticket is not None:
            audit.record(
                session,
                actor=user.username,
                action="queue_call",
                object_type="queue_ticket",
                object_id=str(ticket.id),
                source=f"api:{request.client.host if request.client else 'unknown'}",
            )
        return Called(code=ticket.code if ticket else None, room=body.room)
