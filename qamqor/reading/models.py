"""The reading capability's tables: a study's reading state (claim, urgency, agreement with the
AI) and its reports, one row per version.

A study has no ``reading_studies`` row until someone claims it, marks it urgent or reports it:
the worklist joins the archive's studies to this table (outer join), so a new study is on the
worklist as soon as it is indexed, with nothing written for it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from qamqor.core.db import Base, UTCDateTime, utcnow


class ReadingStudy(Base):
    """Where a study stands for the radiologists."""

    __tablename__ = "reading_studies"
    __table_args__ = (Index("ix_reading_studies_status", "status", "urgency"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(
        ForeignKey("pacs_studies.id", ondelete="CASCADE"), unique=True
    )
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="new")
    """``new``, ``in_progress`` or ``reported`` (:class:`qamqor.reading.enums.ReadingStatus`)."""
    urgency: Mapped[int] = mapped_column(Integer, default=0)
    """Clinical urgency: 0 routine, 1 urgent, 2 emergency (:class:`~.enums.Urgency`)."""
    claimed_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    claimed_by: Mapped[str] = mapped_column(String(64), default="")
    """The claiming user's username (shown to the others)."""
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    agreement: Mapped[str] = mapped_column(String(16), default="")
    """The radiologist against the AI: ``agree``, ``ai_missed``, ``ai_false_alarm`` ("" not
    yet read; :class:`~.enums.Agreement`)."""
    ai_priority: Mapped[str] = mapped_column(String(16), default="")
    """The AI priority the agreement was judged against."""
    agreement_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Report(Base):
    """One version of a study's report. A signed version is never changed: an amendment is a
    new version (``amends_id``) and the old one is kept, marked ``superseded``."""

    __tablename__ = "reading_reports"
    __table_args__ = (UniqueConstraint("study_instance_uid", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    """``draft``, ``signed`` or ``superseded`` (:class:`~.enums.ReportStatus`)."""
    template: Mapped[str] = mapped_column(String(16))
    """``mammo`` or ``chest`` (:class:`~.enums.Template`)."""
    content: Mapped[str] = mapped_column(Text, default="{}")
    """The structured report as JSON (:class:`qamqor.reading.schemas.ReportContent`)."""
    language: Mapped[str] = mapped_column(String(2), default="kk")
    author_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    author: Mapped[str] = mapped_column(String(64), default="")
    author_name: Mapped[str] = mapped_column(String(200), default="")
    amends_id: Mapped[int | None] = mapped_column(
        ForeignKey("reading_reports.id", ondelete="SET NULL"), nullable=True
    )
    amendment_reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    pdf_sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
