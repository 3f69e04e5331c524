"""A small region for tests: a district, two polyclinics, doctors with schedules, residents."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from qamqor.core.db import utcnow, write_session
from qamqor.registry import service as registry
from qamqor.registry.enums import AttachmentBasis, FacilityKind, Sex
from qamqor.registry.iin import make_iin
from qamqor.runtime import Runtime
from qamqor.scheduling import service as scheduling

ALMATY = ZoneInfo("Asia/Almaty")


def iin_for(born: date, sex: Sex, serial: int = 1) -> str:
    while True:
        value = make_iin(born, sex, serial)
        if value:
            return value
        serial += 1


@dataclass
class Region:
    district_id: int
    polyclinic_id: int
    other_polyclinic_id: int
    therapist_id: int
    therapist2_id: int
    mammography_id: int
    therapist_schedule_id: int
    woman_iin: str
    woman_id: int
    man_iin: str
    man_id: int
    phone: str = "+77011234567"
    extra: dict[str, int] = field(default_factory=dict)


def build_region(runtime: Runtime, *, days: int = 3) -> Region:
    today = utcnow().astimezone(ALMATY).date()
    with write_session(runtime.session_factory) as session:
        district = registry.create_district(session, code="D1", name="Алатау ауданы")
        poly = registry.create_facility(
            session,
            code="P1",
            name="№1 қалалық емхана",
            name_ru="Городская поликлиника №1",
            kind=FacilityKind.POLYCLINIC,
            district_id=district.id,
        )
        other = registry.create_facility(
            session,
            code="P2",
            name="№2 қалалық емхана",
            kind=FacilityKind.POLYCLINIC,
            district_id=district.id,
        )
        therapist = registry.create_doctor(
            session,
            code="T1",
            family_name="Ахметова",
            given_name="Гүлнар",
            specialty="therapist",
            facility_id=poly.id,
            room="101",
        )
        therapist2 = registry.create_doctor(
            session,
            code="T2",
            family_name="Иванов",
            given_name="Пётр",
            specialty="therapist",
            facility_id=other.id,
            room="7",
        )
        mammo = registry.create_doctor(
            session,
            code="M1",
            family_name="Серікова",
            given_name="Айгүл",
            specialty="mammography",
            facility_id=poly.id,
            room="210",
        )
        start, end = today + timedelta(days=1), today + timedelta(days=days)
        every_day = range(7)
        schedule = scheduling.create_schedule(
            session,
            doctor_id=therapist.id,
            start_date=start,
            end_date=end,
            day_start=time(9),
            day_end=time(10),
            weekdays=every_day,
        )
        scheduling.create_schedule(
            session,
            doctor_id=therapist2.id,
            start_date=start,
            end_date=end,
            day_start=time(9),
            day_end=time(10),
            weekdays=every_day,
        )
        scheduling.create_schedule(
            session,
            doctor_id=mammo.id,
            start_date=start,
            end_date=end,
            day_start=time(14),
            day_end=time(15),
            weekdays=every_day,
        )
        woman_iin = iin_for(date(1975, 3, 8), Sex.FEMALE)
        woman = registry.register_resident(
            session,
            iin=woman_iin,
            family_name="Нұрланова",
            given_name="Әсел",
            phone="+77011234567",
        )
        man_iin = iin_for(date(1990, 1, 2), Sex.MALE, 5)
        man = registry.register_resident(
            session, iin=man_iin, family_name="Омаров", given_name="Бауыржан", phone="87017654321"
        )
        for resident in (woman, man):
            registry.attach(
                session,
                resident_id=resident.id,
                facility_id=poly.id,
                basis=AttachmentBasis.APPLICATION,
                on=date(2020, 1, 1),
            )
        return Region(
            district_id=district.id,
            polyclinic_id=poly.id,
            other_polyclinic_id=other.id,
            therapist_id=therapist.id,
            therapist2_id=therapist2.id,
            mammography_id=mammo.id,
            therapist_schedule_id=schedule.id,
            woman_iin=woman_iin,
            woman_id=woman.id,
            man_iin=man_iin,
            man_id=man.id,
        )


def slot_soon(runtime: Runtime, region: Region, *, minutes_from_now: int = 30) -> int:
    """A free therapist slot starting soon (today), for check-in."""
    start = (utcnow() + timedelta(minutes=minutes_from_now)).replace(second=0, microsecond=0)
    with write_session(runtime.session_factory) as session:
        return scheduling.add_slot(
            session, schedule_id=region.therapist_schedule_id, start=start, minutes=20
        ).id


def to_utc(day: date, at: time) -> datetime:
    return datetime.combine(day, at, ALMATY)
