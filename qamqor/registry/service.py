"""The registry's service: residents, facilities, doctors, attachments.

Functions take a keyword-only ``session``; the caller commits (or uses ``write_session``).
Errors are ``RegistryError`` subclasses whose messages are translatable msgids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from qamqor.core.i18n import LANGUAGES, N_
from qamqor.registry.enums import AttachmentBasis, FacilityKind, Specialty
from qamqor.registry.errors import (
    FacilityClosedError,
    FacilityNotFoundError,
    RegistryError,
    ResidentNotFoundError,
)
from qamqor.registry.iin import IIN
from qamqor.registry.models import Attachment, District, Doctor, Facility, Resident

PHONE = re.compile(r"^\+7\d{10}$")


def _locking(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def normalise_phone(text: str) -> str:
    """A Kazakhstan mobile number as ``+7XXXXXXXXXX`` (``8 701 ...`` accepted)."""
    digits = re.sub(r"[\s()\-]", "", text or "")
    if digits.startswith("8") and len(digits) == 11:
        digits = "+7" + digits[1:]
    if not PHONE.match(digits):
        raise RegistryError(N_("A phone number is written as +7 and 10 digits."))
    return digits


def create_district(session: Session, *, code: str, name: str, name_ru: str = "") -> District:
    district = District(code=code, name=name, name_ru=name_ru)
    session.add(district)
    session.flush()
    return district


def create_facility(
    session: Session,
    *,
    code: str,
    name: str,
    kind: FacilityKind | str,
    district_id: int,
    name_ru: str = "",
    address: str = "",
    timezone: str = "Asia/Almaty",
) -> Facility:
    facility = Facility(
        code=code,
        name=name,
        name_ru=name_ru,
        kind=FacilityKind(kind).value,
        district_id=district_id,
        address=address,
        timezone=timezone,
    )
    session.add(facility)
    session.flush()
    return facility


def find_facility(session: Session, facility_id: int) -> Facility | None:
    """The facility with this id, or ``None``."""
    return session.get(Facility, facility_id)


def lock_facility(session: Session, facility_id: int) -> Facility:
    """The facility, its row locked until the transaction ends on PostgreSQL (``SELECT ...
    FOR UPDATE``: one ticket number at a time); a plain read on SQLite, whose writers are
    serialised already."""
    if _locking(session):
        facility = session.scalar(
            select(Facility).where(Facility.id == facility_id).with_for_update()
        )
        if facility is not None:
            return facility
    return get_facility(session, facility_id)


def facilities(
    session: Session,
    *,
    facility_id: int | None = None,
    kind: FacilityKind | None = None,
    limit: int = 50,
) -> list[tuple[Facility, District]]:
    """Facilities with their districts, by id (optionally one id, or one kind)."""
    query = (
        select(Facility, District)
        .join(District, District.id == Facility.district_id)
        .order_by(Facility.id)
        .limit(limit)
    )
    if facility_id is not None:
        query = query.where(Facility.id == facility_id)
    if kind is not None:
        query = query.where(Facility.kind == kind.value)
    return [(f, d) for f, d in session.execute(query).all()]


def open_facility_of_kind(
    session: Session, *, district_id: int, kind: FacilityKind
) -> Facility | None:
    """An open facility of ``kind`` in a district (the first by id), or ``None``."""
    return session.scalar(
        select(Facility)
        .where(
            Facility.district_id == district_id,
            Facility.kind == kind.value,
            Facility.is_open.is_(True),
        )
        .order_by(Facility.id)
        .limit(1)
    )


def find_district(session: Session, district_id: int) -> District | None:
    return session.get(District, district_id)


def get_facility(session: Session, facility_id: int) -> Facility:
    facility = session.get(Facility, facility_id)
    if facility is None:
        raise FacilityNotFoundError(N_("No such facility."))
    return facility


#: The largest id the database's integer columns hold (PostgreSQL ``integer``).
_MAX_ID = 2_147_483_647


def facility_by_key(session: Session, key: str) -> Facility:
    """A facility by its id (ASCII digits) or, failing that, its code (``P1``)."""
    key = key.strip()
    facility = None
    if key.isascii() and key.isdigit() and int(key) <= _MAX_ID:
        facility = session.get(Facility, int(key))
    if facility is None:
        facility = session.scalar(select(Facility).where(Facility.code == key))
    if facility is None:
        raise FacilityNotFoundError(N_("No such facility."))
    return facility


def close_facility(session: Session, *, facility_id: int, on: date) -> Facility:
    """Mark a facility closed from ``on``: nothing new can be booked or attached there."""
    facility = get_facility(session, facility_id)
    facility.is_open = False
    facility.closed_on = on
    session.flush()
    return facility


def reopen_facility(session: Session, *, facility_id: int) -> Facility:
    facility = get_facility(session, facility_id)
    facility.is_open = True
    facility.closed_on = None
    session.flush()
    return facility


def ensure_open(facility: Facility) -> None:
    if not facility.is_open:
        raise FacilityClosedError(N_("This facility is closed."))


def find_doctor(session: Session, doctor_id: int) -> Doctor | None:
    """The doctor with this id, or ``None``."""
    return session.get(Doctor, doctor_id)


def doctors(
    session: Session,
    *,
    specialty: str | None = None,
    doctor_id: int | None = None,
    facility_id: int | None = None,
    active_only: bool = False,
    limit: int = 50,
) -> list[Doctor]:
    """Doctors by id, optionally of one specialty, one id or one facility."""
    query = select(Doctor).order_by(Doctor.id).limit(limit)
    if specialty is not None:
        query = query.where(Doctor.specialty == specialty)
    if doctor_id is not None:
        query = query.where(Doctor.id == doctor_id)
    if facility_id is not None:
        query = query.where(Doctor.facility_id == facility_id)
    if active_only:
        query = query.where(Doctor.active.is_(True))
    return list(session.scalars(query))


def create_doctor(
    session: Session,
    *,
    code: str,
    family_name: str,
    given_name: str,
    specialty: Specialty | str,
    facility_id: int,
    patronymic: str = "",
    room: str = "",
) -> Doctor:
    get_facility(session, facility_id)
    doctor = Doctor(
        code=code,
        family_name=family_name,
        given_name=given_name,
        patronymic=patronymic,
        specialty=Specialty(specialty).value,
        facility_id=facility_id,
        room=room,
    )
    session.add(doctor)
    session.flush()
    return doctor


def register_resident(
    session: Session,
    *,
    iin: str,
    family_name: str,
    given_name: str,
    patronymic: str = "",
    phone: str = "",
    region: str = "",
    district_id: int | None = None,
    settlement: str = "",
    address_line: str = "",
    language: str = "kk",
) -> Resident:
    """Add a resident; birth date and sex come from the IIN (validated)."""
    parsed = IIN.parse(iin)
    if not family_name.strip() or not given_name.strip():
        raise RegistryError(N_("A resident needs a family name and a given name."))
    if language not in LANGUAGES:
        raise RegistryError(N_("Unknown language."))
    if session.scalar(select(Resident.id).where(Resident.iin == parsed.value)) is not None:
        raise RegistryError(N_("A resident with this IIN is registered already."))
    resident = Resident(
        iin=parsed.value,
        family_name=family_name.strip(),
        given_name=given_name.strip(),
        patronymic=patronymic.strip(),
        birth_date=parsed.birth_date,
        sex=parsed.sex.value,
        phone=normalise_phone(phone) if phone else "",
        region=region,
        district_id=district_id,
        settlement=settlement,
        address_line=address_line,
        language=language,
    )
    session.add(resident)
    session.flush()
    return resident


def resident_by_iin(session: Session, iin: str) -> Resident:
    """The resident with this IIN (validated first: a typo gets its own message)."""
    value = IIN.parse(iin).value
    resident = session.scalar(select(Resident).where(Resident.iin == value))
    if resident is None:
        raise ResidentNotFoundError(N_("No resident with this IIN is registered."))
    return resident


def find_resident(session: Session, resident_id: int) -> Resident | None:
    """The resident with this id, or ``None``."""
    return session.get(Resident, resident_id)


def find_resident_by_iin(session: Session, iin: str) -> Resident | None:
    """The resident with this (valid) IIN, or ``None``; ``InvalidIINError`` for a bad one."""
    return session.scalar(select(Resident).where(Resident.iin == IIN.parse(iin).value))


def residents(
    session: Session, *, iin: str | None = None, resident_id: int | None = None, limit: int = 50
) -> list[Resident]:
    """Residents with this IIN (validated) or id: never all of them (no bulk listing)."""
    if iin is None and resident_id is None:
        raise RegistryError(N_("Residents are found by IIN or id."))
    query = select(Resident).limit(limit)
    if iin is not None:
        query = query.where(Resident.iin == IIN.parse(iin).value)
    if resident_id is not None:
        query = query.where(Resident.id == resident_id)
    return list(session.scalars(query))


def lock_resident(session: Session, resident_id: int) -> Resident:
    """The resident, their row locked until the transaction ends on PostgreSQL (``SELECT ...
    FOR UPDATE``: one resident's bookings are serialised); a plain read on SQLite."""
    if _locking(session):
        resident = session.scalar(
            select(Resident).where(Resident.id == resident_id).with_for_update()
        )
        if resident is not None:
            return resident
    return get_resident(session, resident_id)


def get_resident(session: Session, resident_id: int) -> Resident:
    resident = session.get(Resident, resident_id)
    if resident is None:
        raise ResidentNotFoundError(N_("No resident with this IIN is registered."))
    return resident


def age_on(birth_date: date, day: date) -> int:
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


@dataclass(frozen=True)
class AttachmentView:
    facility_id: int
    facility_name: str
    facility_name_ru: str
    valid_from: date
    valid_to: date | None
    basis: AttachmentBasis


def attach(
    session: Session,
    *,
    resident_id: int,
    facility_id: int,
    basis: AttachmentBasis | str,
    on: date,
) -> Attachment:
    """Attach a resident to a polyclinic from ``on``; the current attachment ends that day."""
    basis = AttachmentBasis(basis)
    get_resident(session, resident_id)
    facility = get_facility(session, facility_id)
    ensure_open(facility)
    if facility.kind != FacilityKind.POLYCLINIC:
        raise RegistryError(N_("Residents are attached to polyclinics only."))
    current = current_attachment(session, resident_id)
    if current is not None:
        if current.facility_id == facility_id:
            raise RegistryError(N_("The resident is attached to this facility already."))
        if on < current.valid_from:
            raise RegistryError(N_("A new attachment cannot start before the current one."))
        current.valid_to = on
        session.flush()  # the partial unique index sees one current attachment at a time
    attachment = Attachment(
        resident_id=resident_id, facility_id=facility_id, valid_from=on, basis=basis.value
    )
    session.add(attachment)
    session.flush()
    return attachment


def attached_facility(session: Session, resident_id: int) -> Facility | None:
    """The facility the resident is attached to now, or ``None``."""
    return session.scalar(
        select(Facility)
        .join(Attachment, Attachment.facility_id == Facility.id)
        .where(Attachment.resident_id == resident_id, Attachment.valid_to.is_(None))
    )


def current_attachment(session: Session, resident_id: int) -> Attachment | None:
    return session.scalar(
        select(Attachment).where(
            Attachment.resident_id == resident_id, Attachment.valid_to.is_(None)
        )
    )


def attachment_history(session: Session, resident_id: int) -> list[AttachmentView]:
    """Every attachment of a resident, the newest first."""
    rows = session.execute(
        select(Attachment, Facility)
        .join(Facility, Facility.id == Attachment.facility_id)
        .where(Attachment.resident_id == resident_id)
        .order_by(Attachment.valid_from.desc(), Attachment.id.desc())
    ).all()
    return [
        AttachmentView(
            facility_id=f.id,
            facility_name=f.name,
            facility_name_ru=f.name_ru,
            valid_from=a.valid_from,
            valid_to=a.valid_to,
            basis=AttachmentBasis(a.basis),
        )
        for a, f in rows
    ]
