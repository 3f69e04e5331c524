"""Kiosk tables: one-time codes sent to residents' phones (only their hashes are kept)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from qamqor.core.db import Base, UTCDateTime, utcnow


class OneTimeCode(Base):
    __tablename__ = "kiosk_one_time_codes"
    __table_args__ = (Index("ix_kiosk_one_time_codes_resident", "resident_id", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resident_id: Mapped[int] = mapped_column(
        ForeignKey("registry_residents.id", ondelete="CASCADE")
    )
    code_hash: Mapped[str] = mapped_column(String(64))
    """HMAC-SHA-256 of the code with the server's secret and the code's id."""
    kiosk: Mapped[str] = mapped_column(String(64))
    """The kiosk device (its username) that asked for the code."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class KioskDevice(Base):
    """A self-service terminal or hall display: a ``kiosk`` user placed at one facility."""

    __tablename__ = "kiosk_devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    facility_id: Mapped[int] = mapped_column(ForeignKey("registry_facilities.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
