"""The archive's index: Patient / Study / Series / Instance.

Every attribute that C-FIND and QIDO-RS match on or return has a column; dates and times are
kept as DICOM strings (``YYYYMMDD``, ``HHMMSS.FFFFFF``) so that ranges compare as text and
values come back exactly as sent. ``*_search`` columns hold an upper-cased copy for
case-insensitive name matching.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import VARCHAR
from sqlalchemy.orm import Mapped, mapped_column

from qamqor.core.db import Base, UTCDateTime, utcnow


def _searchable(length: int) -> String:
    """Text matched by prefix (``DOE*``): byte order on PostgreSQL, as SQLite always compares,
    so that a prefix becomes an index range on both (a locale collation would not allow it)."""
    return String(length).with_variant(VARCHAR(length, collation="C"), "postgresql")


class Patient(Base):
    __tablename__ = "pacs_patients"
    __table_args__ = (
        UniqueConstraint("patient_id", "issuer_of_patient_id"),
        Index("ix_pacs_patients_name_search", "patient_name_search"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(_searchable(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    patient_name_search: Mapped[str] = mapped_column(_searchable(324), default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Study(Base):
    __tablename__ = "pacs_studies"
    __table_args__ = (
        Index("ix_pacs_studies_date", "study_date", "id"),
        Index("ix_pacs_studies_stability", "stable_at", "last_instance_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_pk: Mapped[int] = mapped_column(
        ForeignKey("pacs_patients.id", ondelete="CASCADE"), index=True
    )
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(_searchable(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="")
    institution_name: Mapped[str] = mapped_column(String(64), default="")
    modalities_in_study: Mapped[str] = mapped_column(String(128), default="")
    """Backslash-separated, sorted: ``CR\\SR``."""
    sop_classes_in_study: Mapped[str] = mapped_column(String(1024), default="")
    number_of_series: Mapped[int] = mapped_column(Integer, default=0)
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stable_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When the "study stable" event was last announced (None: not yet since the last image)."""


class Series(Base):
    __tablename__ = "pacs_series"
    __table_args__ = (Index("ix_pacs_series_modality_study", "modality", "study_pk"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_pk: Mapped[int] = mapped_column(
        ForeignKey("pacs_studies.id", ondelete="CASCADE"), index=True
    )
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    laterality: Mapped[str] = mapped_column(String(16), default="")
    series_date: Mapped[str] = mapped_column(String(8), default="")
    series_time: Mapped[str] = mapped_column(String(16), default="")
    performed_procedure_step_start_date: Mapped[str] = mapped_column(String(8), default="")
    performed_procedure_step_start_time: Mapped[str] = mapped_column(String(16), default="")
    number_of_instances: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Instance(Base):
    __tablename__ = "pacs_instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_pk: Mapped[int] = mapped_column(
        ForeignKey("pacs_series.id", ondelete="CASCADE"), index=True
    )
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bits_allocated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    samples_per_pixel: Mapped[int | None] = mapped_column(Integer, nullable=True)
    photometric_interpretation: Mapped[str] = mapped_column(String(16), default="")
    image_laterality: Mapped[str] = mapped_column(String(16), default="")
    view_position: Mapped[str] = mapped_column(String(16), default="")
    content_date: Mapped[str] = mapped_column(String(8), default="")
    content_time: Mapped[str] = mapped_column(String(16), default="")
    file_path: Mapped[str] = mapped_column(String(255), index=True)
    """Relative to the storage root."""
    file_size: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(64), default="")
    """How it arrived: ``dimse:<AE>``, ``stow:<user>``, ``import``."""
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
