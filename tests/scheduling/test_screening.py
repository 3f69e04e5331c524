"""Cancer-screening eligibility: who is due, invited, screened."""

from __future__ import annotations

from datetime import date

from qamqor.core.db import write_session
from qamqor.core.settings import DEFAULT_SCREENING_PROGRAMS, ScreeningProgram
from qamqor.registry import service as registry
from qamqor.registry.enums import Sex
from qamqor.runtime import Runtime
from qamqor.scheduling.enums import ScreeningEventKind, ScreeningState
from qamqor.scheduling.screening import due_residents, eligible, record_event, resident_status
from tests.registry.region import build_region, iin_for

MAMMO = DEFAULT_SCREENING_PROGRAMS[0]
TODAY = date(2026, 11, 26)


def test_mammography_eligibility_by_age_and_sex() -> None:
    def ok(born: date, sex: str = "female") -> bool:
        return eligible(MAMMO, sex=sex, birth_date=born, on=TODAY)

    assert ok(date(1986, 11, 26))  # 40 today
    assert not ok(date(1986, 11, 27))  # 40 tomorrow
    assert ok(date(1955, 11, 27))  # 70, 71 tomorrow
    assert not ok(date(1955, 11, 26))  # 71 today
    assert not ok(date(1975, 1, 1), "male")


def test_due_invited_screened(runtime: Runtime) -> None:
    region = build_region(runtime)
    with write_session(runtime.session_factory) as session:
        young = registry.register_resident(
            session, iin=iin_for(date(1995, 5, 5), Sex.FEMALE), family_name="А", given_name="Б"
        )
        due = due_residents(session, program=MAMMO, on=TODAY)
        assert region.woman_id in due
        assert young.id not in due and region.man_id not in due
        woman = registry.get_resident(session, region.woman_id)
        [status] = resident_status(session, resident=woman, programs=[MAMMO], on=TODAY)
        assert status.state is ScreeningState.DUE

        record_event(
            session, resident_id=woman.id, program=MAMMO, kind=ScreeningEventKind.INVITED, on=TODAY
        )
        [status] = resident_status(session, resident=woman, programs=[MAMMO], on=TODAY)
        assert status.state is ScreeningState.INVITED
        assert woman.id not in due_residents(session, program=MAMMO, on=TODAY)
        assert woman.id in due_residents(session, program=MAMMO, on=TODAY, include_invited=True)

        record_event(
            session,
            resident_id=woman.id,
            program=MAMMO,
            kind=ScreeningEventKind.SCREENED,
            on=date(2025, 1, 10),
        )
        [status] = resident_status(session, resident=woman, programs=[MAMMO], on=TODAY)
        assert status.state is ScreeningState.SCREENED
        assert status.last_screened == date(2025, 1, 10)
        # Two years after the screening the invitation of 2026 still stands...
        [status] = resident_status(session, resident=woman, programs=[MAMMO], on=date(2027, 1, 10))
        assert status.state is ScreeningState.INVITED
        # ... and once it is older than the interval too, she is due again.
        [status] = resident_status(session, resident=woman, programs=[MAMMO], on=date(2029, 1, 10))
        assert status.state is ScreeningState.DUE
        # Only her polyclinic's list, when asked.
        assert (
            due_residents(
                session, program=MAMMO, on=date(2029, 2, 1), facility_id=region.other_polyclinic_id
            )
            == []
        )


def test_other_programmes_are_configured() -> None:
    colorectal = ScreeningProgram(
        code="colorectal",
        sex="any",
        min_age=50,
        max_age=70,
        interval_months=24,
        specialty="endoscopy",
    )
    assert eligible(colorectal, sex="male", birth_date=date(1970, 1, 1), on=TODAY)
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ScreeningProgram(code="x1", min_age=70, max_age=40, interval_months=12, specialty="s")
