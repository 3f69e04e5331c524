"""Booking rules on both databases: no double booking, one appointment per specialty at a
time, cancellations free the slot at once, reschedules are all-or-nothing, queues."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from itertools import pairwise

import pytest
from sqlalchemy import select

from qamqor.core.db import utcnow, write_session
from qamqor.http.errors import status_for
from qamqor.registry import service as registry
from qamqor.registry.errors import FacilityClosedError
from qamqor.runtime import Runtime
from qamqor.scheduling import (
    AppointmentStateError,
    ConflictingAppointmentError,
    SlotNotFoundError,
    SlotTakenError,
)
from qamqor.scheduling import service as scheduling
from qamqor.scheduling.models import Appointment, Slot
from tests.registry.region import Region, build_region, slot_soon


def first_free(runtime: Runtime, region: Region, specialty: str = "therapist", n: int = 1):
    with runtime.session_factory() as session:
        return scheduling.free_slots(
            session, specialty=specialty, district_id=region.district_id, limit=n
        )


def slot_status(runtime: Runtime, slot_id: int) -> str:
    with runtime.session_factory() as session:
        return str(session.scalar(select(Slot.status).where(Slot.id == slot_id)))


def book(runtime: Runtime, slot_id: int, resident_id: int) -> int:
    with write_session(runtime.session_factory) as session:
        return scheduling.book(
            session, slot_id=slot_id, resident_id=resident_id, actor="test", source="test"
        ).id


def test_free_slots_are_soonest_first_across_the_district(runtime: Runtime) -> None:
    region = build_region(runtime)
    slots = first_free(runtime, region, n=10)
    assert len(slots) == 10
    assert [s.start for s in slots] == sorted(s.start for s in slots)
    assert {s.facility_id for s in slots} == {region.polyclinic_id, region.other_polyclinic_id}
    assert all(s.start > utcnow() for s in slots)


def test_a_slot_is_booked_once(runtime: Runtime) -> None:
    region = build_region(runtime)
    slot = first_free(runtime, region)[0]
    book(runtime, slot.slot_id, region.woman_id)
    assert slot_status(runtime, slot.slot_id) == "busy"
    assert first_free(runtime, region)[0].slot_id != slot.slot_id
    with pytest.raises(SlotTakenError) as caught:
        book(runtime, slot.slot_id, region.man_id)
    assert status_for(caught.value) == 409
    with runtime.session_factory() as session:
        count = session.query(Appointment).filter_by(slot_id=slot.slot_id).count()
    assert count == 1  # nothing half-booked


def test_one_appointment_per_specialty_at_a_time(runtime: Runtime) -> None:
    region = build_region(runtime)
    slots = first_free(runtime, region, n=4)
    # The two polyclinics' therapists have slots at the same time.
    first, same_time = slots[0], next(s for s in slots[1:] if s.start == slots[0].start)
    book(runtime, first.slot_id, region.woman_id)
    with pytest.raises(ConflictingAppointmentError):
        book(runtime, same_time.slot_id, region.woman_id)
    assert slot_status(runtime, same_time.slot_id) == "free"  # rolled back
    book(runtime, same_time.slot_id, region.man_id)  # someone else may
    # Another specialty at a nearby time is fine.
    mammo = first_free(runtime, region, "mammography")[0]
    book(runtime, mammo.slot_id, region.woman_id)


def test_cancel_frees_the_slot_at_once_and_reschedule_is_atomic(runtime: Runtime) -> None:
    region = build_region(runtime)
    slots = first_free(runtime, region, n=6)
    appointment_id = book(runtime, slots[0].slot_id, region.man_id)
    with write_session(runtime.session_factory) as session:
        scheduling.cancel(session, appointment_id=appointment_id, resident_id=region.man_id)
    assert slot_status(runtime, slots[0].slot_id) == "free"
    assert first_free(runtime, region)[0].slot_id == slots[0].slot_id
    with pytest.raises(AppointmentStateError), write_session(runtime.session_factory) as session:
        scheduling.cancel(session, appointment_id=appointment_id)

    appointment_id = book(runtime, slots[0].slot_id, region.man_id)
    taken = slots[2].slot_id
    book(runtime, taken, region.woman_id)
    # Moving onto a taken slot fails and leaves the old appointment as it was.
    with pytest.raises(SlotTakenError), write_session(runtime.session_factory) as session:
        scheduling.reschedule(
            session, appointment_id=appointment_id, new_slot_id=taken, actor="t", source="t"
        )
    assert slot_status(runtime, slots[0].slot_id) == "busy"
    with write_session(runtime.session_factory) as session:
        new = scheduling.reschedule(
            session,
            appointment_id=appointment_id,
            new_slot_id=slots[3].slot_id,
            actor="t",
            source="t",
        )
        assert new.rescheduled_from_id == appointment_id
    assert slot_status(runtime, slots[0].slot_id) == "free"
    assert slot_status(runtime, slots[3].slot_id) == "busy"
    with runtime.session_factory() as session:
        mine = scheduling.resident_appointments(session, resident_id=region.man_id)
    assert [a.id for a in mine] == [new.id]


def test_unknown_slot_and_closed_facility(runtime: Runtime) -> None:
    region = build_region(runtime)
    with pytest.raises(SlotNotFoundError):
        book(runtime, 999_999, region.man_id)
    slot = next(
        s for s in first_free(runtime, region, n=6) if s.facility_id == region.polyclinic_id
    )
    with write_session(runtime.session_factory) as session:
        registry.close_facility(session, facility_id=region.polyclinic_id, on=date.today())
    with pytest.raises(FacilityClosedError):
        book(runtime, slot.slot_id, region.man_id)
    assert all(s.facility_id != region.polyclinic_id for s in first_free(runtime, region, n=20))


def test_two_threads_race_for_the_last_slot_one_wins(runtime: Runtime) -> None:
    region = build_region(runtime)
    slot = first_free(runtime, region)[0]
    barrier = threading.Barrier(2)
    results: dict[int, str] = {}

    def attempt(resident_id: int) -> None:
        barrier.wait()
        try:
            book(runtime, slot.slot_id, resident_id)
            results[resident_id] = "booked"
        except SlotTakenError as exc:
            results[resident_id] = exc.message

    threads = [
        threading.Thread(target=attempt, args=(r,)) for r in (region.man_id, region.woman_id)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results.values()) == [
        "This time has just been taken. Please choose another.",
        "booked",
    ]
    with runtime.session_factory() as session:
        active = session.query(Appointment).filter_by(slot_id=slot.slot_id).count()
    assert active == 1


def test_check_in_gives_a_ticket_and_the_queue_calls_it(runtime: Runtime) -> None:
    region = build_region(runtime)
    soon = slot_soon(runtime, region)
    later = next(s for s in first_free(runtime, region, n=5) if s.slot_id != soon)
    appointment_id = book(runtime, soon, region.man_id)
    later_id = book(runtime, later.slot_id, region.woman_id)
    with write_session(runtime.session_factory) as session:
        ticket = scheduling.check_in(session, appointment_id=appointment_id)
        assert ticket.code == "D-001" or ticket.code.endswith("-001")
        walk_in = scheduling.issue_ticket(
            session, facility_id=region.polyclinic_id, specialty="therapist"
        )
        assert walk_in.number == 2
    with write_session(runtime.session_factory) as session:
        again = scheduling.check_in(session, appointment_id=appointment_id)
        assert again.code == ticket.code  # the same ticket, not a new one
        with pytest.raises(AppointmentStateError, match="two hours"):
            scheduling.check_in(session, appointment_id=later_id)
    with write_session(runtime.session_factory) as session:
        called = scheduling.call_next(session, facility_id=region.polyclinic_id, room="101")
        assert called is not None and called.code == ticket.code
    with runtime.session_factory() as session:
        shown = scheduling.called_tickets(session, facility_id=region.polyclinic_id)
        assert [t.code for t in shown] == [ticket.code]
        assert scheduling.waiting_count(session, facility_id=region.polyclinic_id) == 1


def test_no_show_only_after_the_time(runtime: Runtime) -> None:
    region = build_region(runtime)
    slot = first_free(runtime, region)[0]
    appointment_id = book(runtime, slot.slot_id, region.man_id)
    with pytest.raises(AppointmentStateError), write_session(runtime.session_factory) as session:
        scheduling.mark_no_show(session, appointment_id=appointment_id)
    with write_session(runtime.session_factory) as session:
        scheduling.mark_no_show(
            session, appointment_id=appointment_id, now=slot.end + timedelta(minutes=1)
        )
        assert session.get(Appointment, appointment_id).status == "noshow"


def test_ten_bookings_at_once_of_back_to_back_slots_give_one_appointment(
    runtime: Runtime,
) -> None:
    """One appointment per specialty at a time: not one per slot time. Ten bookings of one
    resident's back-to-back therapist slots, all at once: one wins, nine get 409, and nothing
    of theirs is written (their slots stay free)."""
    region = build_region(runtime, days=4)
    with runtime.session_factory() as session:
        slots = scheduling.free_slots(session, doctor_id=region.therapist_id, limit=10)
    assert len(slots) == 10
    assert any(a.end == b.start for a, b in pairwise(slots))  # back to back
    barrier = threading.Barrier(len(slots))
    results: dict[int, str | int] = {}

    def attempt(slot_id: int) -> None:
        barrier.wait()
        try:
            book(runtime, slot_id, region.man_id)
            results[slot_id] = "booked"
        except ConflictingAppointmentError as exc:
            results[slot_id] = status_for(exc)
        except Exception as exc:  # anything else is a failure of the test
            results[slot_id] = repr(exc)

    threads = [threading.Thread(target=attempt, args=(s.slot_id,)) for s in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results.values(), key=str) == [409] * 9 + ["booked"], results
    (won,) = (slot_id for slot_id, result in results.items() if result == "booked")
    with runtime.session_factory() as session:
        held = session.scalars(
            select(Appointment.slot_id).where(Appointment.resident_id == region.man_id)
        ).all()
    assert held == [won]
    assert [slot_status(runtime, s.slot_id) for s in slots].count("busy") == 1
    assert slot_status(runtime, won) == "busy"

    # Later: the same specialty again is refused with a reason; after cancelling, it is free.
    later = next(s.slot_id for s in slots if s.slot_id != won)
    with pytest.raises(ConflictingAppointmentError, match="Move or cancel it"):
        book(runtime, later, region.man_id)
    with write_session(runtime.session_factory) as session:
        (appointment_id,) = session.scalars(
            select(Appointment.id).where(Appointment.slot_id == won)
        ).all()
        scheduling.cancel(session, appointment_id=appointment_id)
    book(runtime, later, region.man_id)
    # Another specialty, and another resident, are not held back.
    book(runtime, first_free(runtime, region, "mammography")[0].slot_id, region.man_id)
    book(runtime, won, region.woman_id)
