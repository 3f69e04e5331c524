"""A realistic synthetic region for demonstrations and benchmarks.

Districts, polyclinics, hospitals and screening centres, doctors of every specialty with two
weeks of schedules, and residents with valid IINs, Kazakh and Russian names, phones and an
attachment to a polyclinic of their district. Deterministic for a given seed.

Rows are written in bulk: ``COPY`` on PostgreSQL, Core ``executemany`` in large batches on
SQLite, each table in one transaction.
"""

from __future__ import annotations

import random
import time as clock
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Table, func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from qamqor import registry
from qamqor.core.settings import Settings
from qamqor.core.timezone import facility_zone, local_time, region_zone
from qamqor.registry import (
    Attachment,
    District,
    Doctor,
    Facility,
    FacilityKind,
    Resident,
    Sex,
    Specialty,
    make_iin,
)
from qamqor.scheduling.enums import AppointmentStatus
from qamqor.scheduling.models import Schedule, Slot
from qamqor.scheduling.service import slot_rows

REGION = "Жетісу облысы"
DISTRICTS = [
    ("Талдықорған қаласы", "г. Талдыкорган"),
    ("Текелі қаласы", "г. Текели"),
    ("Алакөл ауданы", "Алакольский район"),
    ("Ақсу ауданы", "Аксуский район"),
    ("Ескелді ауданы", "Ескельдинский район"),
    ("Қаратал ауданы", "Каратальский район"),
    ("Кербұлақ ауданы", "Кербулакский район"),
    ("Көксу ауданы", "Коксуский район"),
    ("Панфилов ауданы", "Панфиловский район"),
    ("Сарқан ауданы", "Сарканский район"),
]
SETTLEMENTS = [
    "Талдықорған",
    "Текелі",
    "Үшарал",
    "Жансүгіров",
    "Қарабұлақ",
    "Үштөбе",
    "Сарыөзек",
    "Балпық би",
    "Жаркент",
    "Сарқан",
    "Лепсі",
    "Қапал",
]
STREETS = [
    "Абай",
    "Төле би",
    "Жансүгіров",
    "Қабанбай батыр",
    "Шевченко",
    "Гагарин",
    "Тәуелсіздік",
    "Жетісу",
    "Желтоқсан",
    "Сүйінбай",
]

KAZAKH_MALE = [
    "Нұрлан",
    "Ерлан",
    "Асқар",
    "Бауыржан",
    "Дәулет",
    "Серік",
    "Арман",
    "Ержан",
    "Марат",
    "Айдос",
    "Нұрсұлтан",
    "Әлібек",
    "Қайрат",
    "Жандос",
    "Темірлан",
    "Ақжол",
]
KAZAKH_FEMALE = [
    "Айгүл",
    "Гүлнар",
    "Әсел",
    "Динара",
    "Жанар",
    "Сәуле",
    "Ақмарал",
    "Аружан",
    "Мөлдір",
    "Жұлдыз",
    "Айжан",
    "Назым",
    "Гүлмира",
    "Дана",
    "Інкәр",
    "Салтанат",
]
KAZAKH_FAMILY = [
    "Ахметов",
    "Омаров",
    "Сейітов",
    "Жұмабаев",
    "Нұрланов",
    "Оспанов",
    "Қасымов",
    "Мұхамедов",
    "Төлеуов",
    "Әбенов",
    "Байжанов",
    "Сұлтанов",
    "Ержанов",
    "Серіков",
    "Исаев",
    "Құдайбергенов",
    "Әлиев",
    "Бекмұратов",
]
RUSSIAN_MALE = [
    "Александр",
    "Сергей",
    "Дмитрий",
    "Андрей",
    "Алексей",
    "Иван",
    "Михаил",
    "Николай",
    "Владимир",
    "Евгений",
]
RUSSIAN_FEMALE = [
    "Елена",
    "Ольга",
    "Наталья",
    "Татьяна",
    "Ирина",
    "Светлана",
    "Анна",
    "Мария",
    "Екатерина",
    "Юлия",
]
RUSSIAN_FAMILY = [
    "Иванов",
    "Петров",
    "Смирнов",
    "Кузнецов",
    "Попов",
    "Васильев",
    "Соколов",
    "Михайлов",
    "Новиков",
    "Фёдоров",
    "Морозов",
    "Волков",
]

#: Share of doctors by specialty (polyclinics); screening centres get mammography rooms.
SPECIALTY_WEIGHTS = [
    (Specialty.GENERAL_PRACTITIONER, 30),
    (Specialty.THERAPIST, 15),
    (Specialty.PEDIATRICIAN, 15),
    (Specialty.GYNECOLOGIST, 8),
    (Specialty.CARDIOLOGIST, 5),
    (Specialty.NEUROLOGIST, 5),
    (Specialty.OPHTHALMOLOGIST, 5),
    (Specialty.SURGEON, 5),
    (Specialty.ENDOCRINOLOGIST, 4),
    (Specialty.MAMMOGRAPHY, 5),
    (Specialty.ENDOSCOPY, 3),
]
BATCH = 20_000


@dataclass
class DemoSummary:
    districts: int = 0
    facilities: int = 0
    doctors: int = 0
    schedules: int = 0
    slots: int = 0
    residents: int = 0
    attachments: int = 0
    seconds: float = 0.0


Progress = Callable[[str, int, int], None]
"""``progress(table, done, total)``."""


def _masculine_to_feminine(family: str) -> str:
    if family.endswith(("ов", "ев", "ин", "ёв")):
        return family + "а"
    return family


def _person(rng: random.Random, sex: Sex) -> tuple[str, str, str, str]:
    """(family, given, patronymic, language) of a Kazakh (70%) or Russian (30%) name."""
    if rng.random() < 0.7:
        given = rng.choice(KAZAKH_MALE if sex is Sex.MALE else KAZAKH_FEMALE)
        father = rng.choice(KAZAKH_MALE)
        family = rng.choice(KAZAKH_FAMILY)
        if sex is Sex.FEMALE:
            family = _masculine_to_feminine(family)
        patronymic = f"{father}{'ұлы' if sex is Sex.MALE else 'қызы'}"
        language = "kk" if rng.random() < 0.85 else "ru"
    else:
        given = rng.choice(RUSSIAN_MALE if sex is Sex.MALE else RUSSIAN_FEMALE)
        father = rng.choice(RUSSIAN_MALE)
        family = rng.choice(RUSSIAN_FAMILY)
        if sex is Sex.FEMALE:
            family = _masculine_to_feminine(family)
        stem = father[:-1] + "ев" if father.endswith("й") else father + "ов"
        patronymic = stem + ("ич" if sex is Sex.MALE else "на")
        language = "ru" if rng.random() < 0.9 else "en"
    return family, given, patronymic, language


def _birth_date(rng: random.Random, today: date) -> date:
    # A young population: ages 0-90, fewer people in older ages.
    age = min(int(rng.expovariate(1 / 32)), 95)
    return today - timedelta(days=age * 365 + rng.randrange(365))


def _copy_rows(connection: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """``COPY table FROM STDIN`` (PostgreSQL), else one ``executemany``."""
    if not rows:
        return
    if connection.dialect.name != "postgresql":
        connection.execute(insert(table), rows)
        return
    columns = list(rows[0])
    raw = connection.connection.driver_connection
    assert raw is not None
    names = ", ".join(f'"{c}"' for c in columns)
    with raw.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


def _next_id(connection: Connection, table: Table) -> int:
    return int(connection.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()) + 1


def _fix_sequence(connection: Connection, table: Table) -> None:
    if connection.dialect.name == "postgresql":
        # Table names are the models' own, never input.
        statement = (
            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "  # noqa: S608
            f"(SELECT COALESCE(MAX(id), 1) FROM {table.name}))"
        )
        connection.exec_driver_sql(statement)


def generate_region(
    engine: Engine,
    *,
    residents: int = 100_000,
    doctors: int | None = None,
    days: int = 14,
    seed: int = 2026,
    today: date | None = None,
    progress: Progress | None = None,
    settings: Settings | None = None,
) -> DemoSummary:
    """Write a synthetic region into an empty registry (refuses if residents exist).

    Its facilities are in the region's zone (``settings.timezone``; the environment's settings
    when none are given)."""
    if residents < 1:
        raise ValueError("at least one resident")
    started = clock.perf_counter()
    rng = random.Random(seed)
    zone = region_zone(settings or Settings())
    today = today or datetime.now(zone).date()
    doctors = doctors if doctors is not None else max(30, residents // 500)
    report = progress or (lambda _t, _d, _n: None)
    summary = DemoSummary()
    district_t: Table = District.__table__  # type: ignore[assignment]
    facility_t: Table = Facility.__table__  # type: ignore[assignment]
    doctor_t: Table = Doctor.__table__  # type: ignore[assignment]
    schedule_t: Table = Schedule.__table__  # type: ignore[assignment]
    slot_t: Table = Slot.__table__  # type: ignore[assignment]
    resident_t: Table = Resident.__table__  # type: ignore[assignment]
    attachment_t: Table = Attachment.__table__  # type: ignore[assignment]

    with engine.begin() as connection:
        if connection.execute(select(resident_t.c.id).limit(1)).first() is not None:
            raise ValueError("the registry has residents already; demo data goes into an empty one")
        # Districts and facilities: polyclinics in proportion to the population.
        polyclinics_per_district = max(1, min(40, residents // 25_000))
        # Codes people can type (``qamqor kiosk add ... --facility P1``): polyclinics P1, P2...,
        # hospitals H1..., screening centres S1..., numbered across the region; DEMO- in front
        # when the registry has facilities already (their codes may be taken).
        prefix = (
            "" if connection.execute(select(facility_t.c.id).limit(1)).first() is None else "DEMO-"
        )
        numbers = {kind: 0 for kind in FacilityKind}
        letters = {
            FacilityKind.POLYCLINIC: "P",
            FacilityKind.HOSPITAL: "H",
            FacilityKind.SCREENING_CENTER: "S",
        }
        district_ids: list[int] = []
        polyclinics: dict[int, list[int]] = {}
        screening: dict[int, int] = {}
        facility_rows: list[dict[str, Any]] = []
        next_district = _next_id(connection, district_t)
        next_facility = _next_id(connection, facility_t)
        for index, (name, name_ru) in enumerate(DISTRICTS):
            district_id = next_district + index
            district_ids.append(district_id)
            connection.execute(
                insert(district_t),
                [
                    {
                        "id": district_id,
                        "code": f"DEMO-D{index + 1:02d}",
                        "name": name,
                        "name_ru": name_ru,
                    }
                ],
            )
            polyclinics[district_id] = []
            kinds = [FacilityKind.POLYCLINIC] * polyclinics_per_district + [
                FacilityKind.HOSPITAL,
                FacilityKind.SCREENING_CENTER,
            ]
            for number, kind in enumerate(kinds, start=1):
                facility_id = next_facility
                next_facility += 1
                label = {
                    FacilityKind.POLYCLINIC: (f"№{number} емхана", f"Поликлиника №{number}"),
                    FacilityKind.HOSPITAL: ("Аудандық аурухана", "Районная больница"),
                    FacilityKind.SCREENING_CENTER: ("Скрининг орталығы", "Скрининговый центр"),
                }[kind]
                numbers[kind] += 1
                facility_rows.append(
                    {
                        "id": facility_id,
                        "code": f"{prefix}{letters[kind]}{numbers[kind]}",
                        "name": f"{name}: {label[0]}",
                        "name_ru": f"{name_ru}: {label[1]}",
                        "kind": kind.value,
                        "district_id": district_id,
                        "address": f"{rng.choice(STREETS)} к-сі, {rng.randint(1, 120)}",
                        "timezone": zone.key,
                        "is_open": True,
                        "closed_on": None,
                    }
                )
                if kind is FacilityKind.POLYCLINIC:
                    polyclinics[district_id].append(facility_id)
                elif kind is FacilityKind.SCREENING_CENTER:
                    screening[district_id] = facility_id
        connection.execute(insert(facility_t), facility_rows)
        _fix_sequence(connection, district_t)
        _fix_sequence(connection, facility_t)
        summary.districts, summary.facilities = len(district_ids), len(facility_rows)

        # Doctors, their schedules and slots.
        specialties = [s for s, _ in SPECIALTY_WEIGHTS]
        weights = [w for _, w in SPECIALTY_WEIGHTS]
        doctor_rows, schedule_rows, slot_batch = [], [], []
        next_doctor = _next_id(connection, doctor_t)
        next_schedule = _next_id(connection, schedule_t)
        facility_district = {f["id"]: f["district_id"] for f in facility_rows}
        # From today: the rest of today's hours can be booked (and checked in for) at once.
        start_date, end_date = today, today + timedelta(days=days - 1)
        for n in range(doctors):
            specialty = rng.choices(specialties, weights)[0]
            district_id = district_ids[n % len(district_ids)]
            if specialty is Specialty.MAMMOGRAPHY:
                facility_id = screening[district_id]
            else:
                facility_id = rng.choice(polyclinics[district_id])
            sex = Sex.FEMALE if rng.random() < 0.7 else Sex.MALE
            family, given, patronymic, _ = _person(rng, sex)
            doctor_id = next_doctor + n
            doctor_rows.append(
                {
                    "id": doctor_id,
                    "code": f"DEMO-{doctor_id:06d}",
                    "family_name": family,
                    "given_name": given,
                    "patronymic": patronymic,
                    "specialty": specialty.value,
                    "facility_id": facility_id,
                    "room": str(100 + n % 300),
                    "active": True,
                }
            )
            morning = n % 2 == 0
            schedule_id = next_schedule + n
            schedule_rows.append(
                {
                    "id": schedule_id,
                    "doctor_id": doctor_id,
                    "facility_id": facility_id,
                    "specialty": specialty.value,
                    "start_date": start_date,
                    "end_date": end_date,
                    "slot_minutes": 20,
                }
            )
            slot_batch.extend(
                slot_rows(
                    schedule_id=schedule_id,
                    doctor_id=doctor_id,
                    facility_id=facility_id,
                    district_id=facility_district[facility_id],
                    specialty=specialty.value,
                    zone=zone,
                    start_date=start_date,
                    end_date=end_date,
                    day_start=time(9) if morning else time(14),
                    day_end=time(13) if morning else time(18),
                    slot_minutes=20,
                )
            )
        connection.execute(insert(doctor_t), doctor_rows)
        connection.execute(insert(schedule_t), schedule_rows)
        _fix_sequence(connection, doctor_t)
        _fix_sequence(connection, schedule_t)
        for index in range(0, len(slot_batch), BATCH):
            _copy_rows(connection, slot_t, slot_batch[index : index + BATCH])
            report("slots", min(index + BATCH, len(slot_batch)), len(slot_batch))
        summary.doctors, summary.schedules, summary.slots = (
            len(doctor_rows),
            len(schedule_rows),
            len(slot_batch),
        )

    # Residents and attachments, in batches (one transaction for all).
    serials: dict[tuple[date, Sex], int] = {}
    created_at = datetime.now(UTC)
    attach_from = date(today.year - 3, 1, 1)
    with engine.begin() as connection:
        next_resident = _next_id(connection, resident_t)
        next_attachment = _next_id(connection, attachment_t)
        done = 0
        for batch in _batches(residents):
            resident_rows, attachment_rows = [], []
            for _ in range(batch):
                sex = Sex.FEMALE if rng.random() < 0.52 else Sex.MALE
                while True:
                    born = _birth_date(rng, today)
                    serial = serials.get((born, sex), rng.randrange(1000))
                    iin = None
                    while iin is None and serial < 10_000:
                        iin = make_iin(born, sex, serial)
                        serial += 1
                    serials[(born, sex)] = serial
                    if iin is not None:
                        break
                family, given, patronymic, language = _person(rng, sex)
                district_id = rng.choice(district_ids)
                resident_id = next_resident + done
                resident_rows.append(
                    {
                        "id": resident_id,
                        "iin": iin,
                        "family_name": family,
                        "given_name": given,
                        "patronymic": patronymic,
                        "birth_date": born,
                        "sex": sex.value,
                        "region": REGION,
                        "district_id": district_id,
                        "settlement": rng.choice(SETTLEMENTS),
                        "address_line": f"{rng.choice(STREETS)} к-сі, {rng.randint(1, 200)}",
                        "phone": f"+77{rng.choice('0570')}{rng.randrange(10**8):08d}",
                        "language": language,
                        "created_at": created_at,
                    }
                )
                attachment_rows.append(
                    {
                        "id": next_attachment + done,
                        "resident_id": resident_id,
                        "facility_id": rng.choice(polyclinics[district_id]),
                        "valid_from": attach_from,
                        "valid_to": None,
                        "basis": "application",
                        "created_at": created_at,
                    }
                )
                done += 1
            _copy_rows(connection, resident_t, resident_rows)
            _copy_rows(connection, attachment_t, attachment_rows)
            report("residents", done, residents)
        _fix_sequence(connection, resident_t)
        _fix_sequence(connection, attachment_t)
    summary.residents = summary.attachments = residents
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
    summary.seconds = clock.perf_counter() - started
    return summary


def _batches(total: int) -> Iterator[int]:
    while total > 0:
        size = min(BATCH, total)
        yield size
        total -= size


def registry_is_empty(engine: Engine) -> bool:
    with engine.connect() as connection:
        return connection.execute(select(District.id).limit(1)).first() is None


def generate_with_progress(engine: Engine, *, console: Any, **options: Any) -> DemoSummary:
    """``generate_region`` with a rich progress bar and a printed summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
    from rich.table import Table as RichTable

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.update(tasks[table], completed=done)

        summary = generate_region(engine, progress=progress, **options)
    table = RichTable(title="Demo region")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name in ("districts", "facilities", "doctors", "schedules", "slots", "residents"):
        table.add_row(name, f"{getattr(summary, name):,}")
    console.print(table)
    console.print(
        f"Written in {summary.seconds:.1f} s "
        f"({summary.residents / max(summary.seconds, 1e-9):,.0f} residents/s overall)."
    )
    return summary


# Sample residents for the kiosk's demonstration ---------------------------------------------
@dataclass(frozen=True)
class SampleResident:
    """A resident the demo kiosk is shown with (IIN in ``demo-credentials.txt``)."""

    iin: str
    family_name: str
    given_name: str
    patronymic: str
    phone: str
    language: str
    visit: Specialty
    """The specialty of the visit booked for them at the kiosk's polyclinic."""
    today: bool
    """The visit is within the next two hours (check-in open); else on a later day."""
    shows: str
    """What the resident shows at the kiosk (English, for the credentials file)."""


SAMPLE_RESIDENTS = (
    # The README's example IIN.
    SampleResident(
        "860904350504",
        "Сейітов",
        "Ерлан",
        "Нұрланұлы",
        "+77010000001",
        "kk",
        Specialty.GENERAL_PRACTITIONER,
        today=True,
        shows="a visit today: check in at the kiosk, print the ticket, see it on the hall display",
    ),
    SampleResident(
        "750308412041",
        "Жұмабаева",
        "Айгүл",
        "Серікқызы",
        "+77010000002",
        "kk",
        Specialty.THERAPIST,
        today=True,
        shows="a woman of 51, due for mammography (book it); a visit today as well",
    ),
    SampleResident(
        "921121423078",
        "Петрова",
        "Ольга",
        "Ивановна",
        "+77010000003",
        "ru",
        Specialty.GENERAL_PRACTITIONER,
        today=False,
        shows="a visit on a later day: change its time or cancel it",
    ),
)
#: Doctors made for the demonstration where the generated region has none of a specialty.
DEMO_DOCTORS = {
    Specialty.GENERAL_PRACTITIONER: ("Ахметова", "Гүлнар", "Серікқызы", "104"),
    Specialty.THERAPIST: ("Омаров", "Дәулет", "Асқарұлы", "112"),
    Specialty.MAMMOGRAPHY: ("Серікова", "Айгүл", "Маратқызы", "210"),
}
#: A visit "today" starts this soon at the earliest (check-in opens two hours before).
SOON = timedelta(minutes=10)


@dataclass(frozen=True)
class DemoVisit:
    resident: SampleResident
    start: datetime | None
    """When the visit booked for them starts (``None``: none could be booked)."""


def _demo_doctor(session: Session, facility: Facility, specialty: Specialty, today: date) -> Doctor:
    """An active doctor of ``specialty`` at ``facility``, made (with two weeks of every-day
    schedule, 9:00 to 18:00) when there is none."""
    from qamqor.registry import create_doctor
    from qamqor.scheduling.service import create_schedule

    found = registry.doctors(
        session, specialty=specialty.value, facility_id=facility.id, active_only=True, limit=1
    )
    if found:
        return found[0]
    family, given, patronymic, room = DEMO_DOCTORS[specialty]
    doctor = create_doctor(
        session,
        code=f"{facility.code}-{specialty.value}"[:32],
        family_name=family,
        given_name=given,
        patronymic=patronymic,
        specialty=specialty,
        facility_id=facility.id,
        room=room,
    )
    create_schedule(
        session,
        doctor_id=doctor.id,
        start_date=today,
        end_date=today + timedelta(days=13),
        day_start=time(9),
        day_end=time(18),
        weekdays=range(7),
    )
    return doctor


def _slot_soon(session: Session, doctor: Doctor, now: datetime) -> int | None:
    """A free slot of ``doctor`` whose check-in is open now: one of the schedule's, else one
    added a quarter of an hour from now (the demo may run in the evening)."""
    from qamqor.scheduling.errors import SchedulingError
    from qamqor.scheduling.service import CHECK_IN_EARLY, add_slot, free_slots

    found = free_slots(
        session,
        doctor_id=doctor.id,
        start_from=now + SOON,
        start_before=now + CHECK_IN_EARLY,
        limit=1,
    )
    if found:
        return found[0].slot_id
    schedule_id = session.scalar(
        select(Schedule.id).where(Schedule.doctor_id == doctor.id).order_by(Schedule.id.desc())
    )
    if schedule_id is None:
        return None
    start = (now + timedelta(minutes=15)).replace(second=0, microsecond=0)
    start += timedelta(minutes=-start.minute % 5)
    for _ in range(5):
        try:
            return add_slot(session, schedule_id=schedule_id, start=start, minutes=20).id
        except SchedulingError:  # the doctor has a slot at that time already
            start += timedelta(minutes=20)
    return None


def _slot_later(session: Session, doctor: Doctor, now: datetime, zone: ZoneInfo) -> int | None:
    """The doctor's first free slot from tomorrow on (local time)."""
    from qamqor.scheduling.service import free_slots

    tomorrow = datetime.combine(local_time(now, zone).date() + timedelta(days=1), time(0), zone)
    found = free_slots(session, doctor_id=doctor.id, start_from=tomorrow, limit=1)
    return found[0].slot_id if found else None


def ensure_demo_visits(
    session: Session,
    *,
    facility_id: int,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> list[DemoVisit]:
    """The sample residents, attached to the kiosk's polyclinic, each with their visit: today's
    within the next two hours (check-in open at once), or one on a later day. Run on every
    start (``qamqor demo init``): a visit that is over is replaced, a current one kept. The
    caller commits."""
    from qamqor.registry import AttachmentBasis, attach, current_attachment, register_resident
    from qamqor.scheduling.enums import ACTIVE_APPOINTMENT_STATUSES
    from qamqor.scheduling.errors import SchedulingError
    from qamqor.scheduling.models import Appointment
    from qamqor.scheduling.service import CHECK_IN_EARLY, book, cancel

    now = now or datetime.now(UTC)
    facility = registry.find_facility(session, facility_id)
    if facility is None:
        return []
    zone = facility_zone(settings or Settings(), facility.timezone)
    today = local_time(now, zone).date()
    screening_centre = registry.open_facility_of_kind(
        session, district_id=facility.district_id, kind=FacilityKind.SCREENING_CENTER
    )
    # Screenings are booked anywhere in the district: make sure there is time to book.
    _demo_doctor(session, screening_centre or facility, Specialty.MAMMOGRAPHY, today)
    visits = []
    for sample in SAMPLE_RESIDENTS:
        resident = registry.find_resident_by_iin(session, sample.iin)
        if resident is None:
            resident = register_resident(
                session,
                iin=sample.iin,
                family_name=sample.family_name,
                given_name=sample.given_name,
                patronymic=sample.patronymic,
                phone=sample.phone,
                region=REGION,
                district_id=facility.district_id,
                settlement=SETTLEMENTS[0],
                address_line="Абай к-сі, 1",
                language=sample.language,
            )
        else:  # a generated resident had the IIN: now it is the sample's
            resident.family_name, resident.given_name = sample.family_name, sample.given_name
            resident.patronymic, resident.phone = sample.patronymic, sample.phone
            resident.district_id, resident.language = facility.district_id, sample.language
        attached = current_attachment(session, resident.id)
        if attached is None or attached.facility_id != facility.id:
            attach(
                session,
                resident_id=resident.id,
                facility_id=facility.id,
                basis=AttachmentBasis.APPLICATION,
                on=today,
            )
        doctor = _demo_doctor(session, facility, sample.visit, today)
        current = session.scalars(
            select(Appointment)
            .where(
                Appointment.resident_id == resident.id,
                Appointment.specialty == sample.visit.value,
                Appointment.status.in_([s.value for s in ACTIVE_APPOINTMENT_STATUSES]),
                Appointment.end > now,
            )
            .order_by(Appointment.start)
        ).first()
        if current is not None:
            open_now = current.start - CHECK_IN_EARLY <= now
            if (
                open_now == sample.today
                or current.status != AppointmentStatus.BOOKED
                or current.start <= now
            ):
                visits.append(DemoVisit(sample, current.start))  # still as it should be
                continue
            cancel(session, appointment_id=current.id, resident_id=resident.id, now=now)
        slot_id = (
            _slot_soon(session, doctor, now)
            if sample.today
            else _slot_later(session, doctor, now, zone)
        )
        start = None
        if slot_id is not None:
            try:
                start = book(
                    session,
                    slot_id=slot_id,
                    resident_id=resident.id,
                    actor="demo",
                    source="demo",
                    now=now,
                ).start
            except SchedulingError:
                start = None
        visits.append(DemoVisit(sample, start))
    session.flush()
    return visits
