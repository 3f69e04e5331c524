"""Registry tables: districts, facilities, doctors, residents and their attachments."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from qamqor.core.db import Base, UTCDateTime, utcnow


class District(Base):
    """An administrative district (аудан) of the region, or a city."""

    __tablename__ = "registry_districts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    """The official name, in Kazakh."""
    name_ru: Mapped[str] = mapped_column(String(200), default="")


class Facility(Base):
    """A polyclinic, hospital or screening center."""

    __tablename__ = "registry_facilities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    name_ru: Mapped[str] = mapped_column(String(300), default="")
    kind: Mapped[str] = mapped_column(String(32))
    district_id: Mapped[int] = mapped_column(ForeignKey("registry_districts.id"), index=True)
    address: Mapped[str] = mapped_column(String(300), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Almaty")
    is_open: Mapped[bool] = mapped_column(Boolean, default=True)
    closed_on: Mapped[date | None] = mapped_column(Date, nullable=True)


class Doctor(Base):
    """A doctor (or a diagnostic room) working at one facility with one specialty."""

    __tablename__ = "registry_doctors"
    __table_args__ = (Index("ix_registry_doctors_facility_specialty", "facility_id", "specialty"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    """The staff number in the health department's register."""
    family_name: Mapped[str] = mapped_column(String(100))
    given_name: Mapped[str] = mapped_column(String(100))
    patronymic: Mapped[str] = mapped_column(String(100), default="")
    specialty: Mapped[str] = mapped_column(String(40), index=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("registry_facilities.id"))
    room: Mapped[str] = mapped_column(String(20), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    @property
    def short_name(self) -> str:
        """How residents see the doctor on screens and tickets: "Family G."."""
        return f"{self.family_name} {self.given_name[:1]}."


class Resident(Base):
    """A resident of the region, keyed by IIN."""

    __tablename__ = "registry_residents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    iin: Mapped[str] = mapped_column(String(12), unique=True)
    family_name: Mapped[str] = mapped_column(String(100))
    given_name: Mapped[str] = mapped_column(String(100))
    patronymic: Mapped[str] = mapped_column(String(100), default="")
    birth_date: Mapped[date] = mapped_column(Date)
    sex: Mapped[str] = mapped_column(String(8))
    region: Mapped[str] = mapped_column(String(100), default="")
    district_id: Mapped[int | None] = mapped_column(
        ForeignKey("registry_districts.id"), nullable=True, index=True
    )
    settlement: Mapped[str] = mapped_column(String(100), default="")
    address_line: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(20), default="")
    """E.164, e.g. ``+77011234567``; one-time codes of the kiosk go here."""
    language: Mapped[str] = mapped_column(String(2), default="kk")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Attachment(Base):
    """A resident's attachment to a primary-care facility over a period (history kept)."""

    __tablename__ = "registry_attachments"
    __table_args__ = (
        # At most one current attachment per resident.
        Index(
            "uq_registry_attachments_current",
            "resident_id",
            unique=True,
            sqlite_where=text("valid_to IS NULL"),
            postgresql_where=text("valid_to IS NULL"),
        ),
        Index("ix_registry_attachments_resident", "resident_id", "valid_from"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resident_id: Mapped[int] = mapped_column(
        ForeignKey("registry_residents.id", ondelete="CASCADE")
    )
    facility_id: Mapped[int] = mapped_column(ForeignKey("registry_facilities.id"), index=True)
    valid_from: Mapped[date] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date, nullable=True)
    """The day the attachment ended (exclusive); ``None`` while it lasts."""
    basis: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
