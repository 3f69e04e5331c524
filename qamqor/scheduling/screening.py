"""Cancer-screening eligibility computed from the registry: who is due, invited, screened.

A resident is *eligible* for a programme on a day when their sex matches and their age is
within ``min_age..max_age`` (inclusive). An eligible resident is *screened* when a screening
is recorded within the programme's interval before that day, *invited* when an invitation
was recorded after the last screening (or ever, if never screened) and they are not screened,
and *due* otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from qamqor.core.settings import ScreeningProgram
from qamqor.registry import Attachment, Resident, Sex, age_on
from qamqor.scheduling.enums import ScreeningEventKind, ScreeningState
from qamqor.scheduling.errors import SchedulingError
from qamqor.scheduling.models import ScreeningEvent


def _months_before(day: date, months: int) -> date:
    month_index = day.year * 12 + day.month - 1 - months
    year, month = divmod(month_index, 12)
    month += 1
    for candidate in (day.day, 30, 29, 28):
        try:
            return date(year, month, min(day.day, candidate))
        except ValueError:
            continue
    raise AssertionError("unreachable")


def _years_before(day: date, years: int) -> date:
    return _months_before(day, years * 12)


#: ``ScreeningProgram.sex`` of a programme for both sexes.
ANY_SEX = "any"


def eligible(program: ScreeningProgram, *, sex: Sex | str, birth_date: date, on: date) -> bool:
    if program.sex != ANY_SEX and Sex(sex) != program.sex:
        return False
    return program.min_age <= age_on(birth_date, on) <= program.max_age


@dataclass(frozen=True)
class ScreeningStatus:
    program: str
    specialty: str
    state: ScreeningState
    last_screened: date | None


def program_by_code(programs: Sequence[ScreeningProgram], code: str) -> ScreeningProgram:
    for program in programs:
        if program.code == code:
            return program
    raise SchedulingError("unknown screening programme")


def resident_status(
    session: Session, *, resident: Resident, programs: Sequence[ScreeningProgram], on: date
) -> list[ScreeningStatus]:
    """The programmes a resident is eligible for today, with their state in each."""
    found = []
    for program in programs:
        if not eligible(program, sex=resident.sex, birth_date=resident.birth_date, on=on):
            continue
        last_screened = session.scalar(
            select(func.max(ScreeningEvent.on)).where(
                ScreeningEvent.resident_id == resident.id,
                ScreeningEvent.program == program.code,
                ScreeningEvent.kind == ScreeningEventKind.SCREENED.value,
            )
        )
        if last_screened is not None and last_screened > _months_before(
            on, program.interval_months
        ):
            state = ScreeningState.SCREENED
        else:
            invited = session.scalar(
                select(func.max(ScreeningEvent.on)).where(
                    ScreeningEvent.resident_id == resident.id,
                    ScreeningEvent.program == program.code,
                    ScreeningEvent.kind == ScreeningEventKind.INVITED.value,
                )
            )
            fresh = (
                invited is not None
                and invited > _months_before(on, program.interval_months)
                and (last_screened is None or invited > last_screened)
            )
            state = ScreeningState.INVITED if fresh else ScreeningState.DUE
        found.append(ScreeningStatus(program.code, program.specialty, state, last_screened))
    return found


def due_residents(
    session: Session,
    *,
    program: ScreeningProgram,
    on: date,
    facility_id: int | None = None,
    include_invited: bool = False,
    limit: int = 1000,
) -> list[int]:
    """Ids of eligible residents not screened within the interval (optionally of one
    polyclinic's attachment list), for invitations. Invited ones are left out unless asked."""
    born_after = _years_before(on, program.max_age + 1)  # exclusive
    born_on_or_before = _years_before(on, program.min_age)
    recent = _months_before(on, program.interval_months)
    screened = exists().where(
        ScreeningEvent.resident_id == Resident.id,
        ScreeningEvent.program == program.code,
        ScreeningEvent.kind == ScreeningEventKind.SCREENED.value,
        ScreeningEvent.on > recent,
    )
    query = select(Resident.id).where(
        Resident.birth_date > born_after,
        Resident.birth_date <= born_on_or_before,
        ~screened,
    )
    if program.sex != ANY_SEX:
        query = query.where(Resident.sex == Sex(program.sex).value)
    if not include_invited:
        invited = exists().where(
            ScreeningEvent.resident_id == Resident.id,
            ScreeningEvent.program == program.code,
            ScreeningEvent.kind == ScreeningEventKind.INVITED.value,
            ScreeningEvent.on > recent,
        )
        query = query.where(~invited)
    if facility_id is not None:
        query = query.where(
            exists().where(
                and_(
                    Attachment.resident_id == Resident.id,
                    Attachment.facility_id == facility_id,
                    Attachment.valid_to.is_(None),
                )
            )
        )
    return list(session.scalars(query.order_by(Resident.id).limit(limit)))


def record_event(
    session: Session,
    *,
    resident_id: int,
    program: ScreeningProgram,
    kind: ScreeningEventKind,
    on: date,
    appointment_id: int | None = None,
) -> ScreeningEvent:
    event = ScreeningEvent(
        resident_id=resident_id,
        program=program.code,
        kind=kind.value,
        on=on,
        appointment_id=appointment_id,
    )
    session.add(event)
    session.flush()
    return event
