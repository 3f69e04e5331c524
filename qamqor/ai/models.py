"""The AI capability's tables: one analysis state and result per study, its images, findings.

``ai_studies`` is also the durable job state: a study's row says whether its analysis is
queued, running (claimed by a worker, with a heartbeat), done or failed, how often it was tried,
and what went into it (``source_fingerprint``). A sweep re-queues rows whose worker stopped
beating (:mod:`qamqor.ai.pipeline`), so no analysis is lost when a worker dies.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from qamqor.core.db import Base, UTCDateTime, utcnow


class AIStudy(Base):
    """A study's AI triage: job state, combined score and priority."""

    __tablename__ = "ai_studies"
    __table_args__ = (
        Index("ix_ai_studies_worklist", "priority_rank", "score"),
        Index("ix_ai_studies_status", "status", "heartbeat_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    """``queued``, ``running``, ``done`` or ``failed`` (:class:`qamqor.ai.enums.JobStatus`)."""
    task: Mapped[str] = mapped_column(String(16), default="")
    """``chest``, ``mammo``, or "" when nothing in the study is for an analyser."""
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Probability of a suspicious finding in the study (module docstring of analysis)."""
    priority: Mapped[str] = mapped_column(String(16), default="")
    """``high``, ``medium``, ``low``, ``not_analysed``; "" until the first analysis ends."""
    priority_rank: Mapped[int] = mapped_column(Integer, default=-1)
    """3 high .. 0 not analysed, -1 pending: the worklist sorts on it."""
    model: Mapped[str] = mapped_column(String(100), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    """Why the study or some of its images were not analysed, or why the job failed."""
    reason_messages: Mapped[list[Any]] = mapped_column(JSON, default=list)
    """``reason`` as translatable messages (:class:`qamqor.core.i18n.Message` JSON): pages show
    it in the reader's language; ``reason`` keeps the English text for the API and scripts."""
    breast_scores: Mapped[str] = mapped_column(String(100), default="")
    """Mammography: ``L=0.1234;R=0.5678``."""
    source_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    """SHA-256 of the analysed candidates' SOP Instance UIDs: a study analysed with the same
    images is not analysed again."""
    report_sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    priority_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When the current priority was set (the images analysed; the SR follows)."""
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    worker: Mapped[str] = mapped_column(String(100), default="")
    """``host:pid`` of the worker holding the job (running) or that finished it."""

    images: Mapped[list[AIImage]] = relationship(
        back_populates="study", cascade="all, delete-orphan", order_by="AIImage.id"
    )


class AIImage(Base):
    """One image of a study: analysed (score) or left alone (reason)."""

    __tablename__ = "ai_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ai_study_id: Mapped[int] = mapped_column(
        ForeignKey("ai_studies.id", ondelete="CASCADE"), index=True
    )
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    task: Mapped[str] = mapped_column(String(16), default="")
    view: Mapped[str] = mapped_column(String(16), default="")
    laterality: Mapped[str] = mapped_column(String(1), default="")
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    model: Mapped[str] = mapped_column(String(100), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    reason_messages: Mapped[list[Any]] = mapped_column(JSON, default=list)
    overlay_sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")

    study: Mapped[AIStudy] = relationship(back_populates="images")
    findings: Mapped[list[AIFinding]] = relationship(
        back_populates="image", cascade="all, delete-orphan", order_by="AIFinding.rank"
    )


class AIFinding(Base):
    """A place the model points at, in the source image's pixels (x right, y down, from 0)."""

    __tablename__ = "ai_findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ai_image_id: Mapped[int] = mapped_column(
        ForeignKey("ai_images.id", ondelete="CASCADE"), index=True
    )
    rank: Mapped[int] = mapped_column(Integer)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(64), default="")

    image: Mapped[AIImage] = relationship(back_populates="findings")
