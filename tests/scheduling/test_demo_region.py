"""The demo-region generator writes a consistent region on both databases."""

from __future__ import annotations

from sqlalchemy import func, select

from qamqor.core.db import write_session
from qamqor.registry import is_valid_iin
from qamqor.registry.models import Attachment, Doctor, Facility, Resident
from qamqor.runtime import Runtime
from qamqor.scheduling import service as scheduling
from qamqor.scheduling.demo import generate_region, registry_is_empty
from qamqor.scheduling.models import Slot


def test_generated_region_is_valid_and_bookable(runtime: Runtime) -> None:
    assert registry_is_empty(runtime.engine)
    summary = generate_region(runtime.engine, residents=3000, doctors=40, days=3, seed=7)
    assert summary.residents == 3000 and summary.doctors == 40 and summary.slots > 0
    with runtime.session_factory() as session:
        iins = session.scalars(select(Resident.iin)).all()
        assert len(iins) == len(set(iins)) == 3000
        assert all(is_valid_iin(value) for value in iins)
        assert session.scalar(select(func.count(Attachment.id))) == 3000
        # Every attachment is to a polyclinic of the resident's district.
        wrong = session.scalar(
            select(func.count(Attachment.id))
            .join(Resident, Resident.id == Attachment.resident_id)
            .join(Facility, Facility.id == Attachment.facility_id)
            .where((Facility.kind != "polyclinic") | (Facility.district_id != Resident.district_id))
        )
        assert wrong == 0
        assert session.scalar(select(func.count(Slot.id))) == summary.slots
        doctor = session.scalars(select(Doctor)).first()
        assert doctor is not None
        resident_id = session.scalars(select(Resident.id)).first()
    assert not registry_is_empty(runtime.engine)
    # The sequences follow the bulk-inserted ids: the service can add rows and book.
    with runtime.session_factory() as session:
        slot = scheduling.free_slots(session, limit=1)[0]
    with write_session(runtime.session_factory) as session:
        appointment = scheduling.book(
            session, slot_id=slot.slot_id, resident_id=resident_id, actor="t", source="t"
        )
        assert appointment.id >= 1
    import pytest

    with pytest.raises(ValueError, match="empty"):
        generate_region(runtime.engine, residents=10)
