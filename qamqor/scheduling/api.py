"""A small JSON API for the staff's side of the live queue: call the next ticket to a room."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from qamqor.core.auth import REGISTRY_ROLES
from qamqor.http.deps import Principal, RuntimeDep, require_role
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
    code = service.call_next_at(
        runtime.session_factory,
        facility=facility,
        room=body.room,
        actor=user.username,
        source=f"api:{request.client.host if request.client else 'unknown'}",
    )
    return Called(code=code, room=body.room)
