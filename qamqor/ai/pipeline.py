"""Studies analysed on arrival: "study stable" -> job -> results in the archive and the index.

How no analysis is lost (``ai_studies`` is the durable state, Huey only carries the messages):

1. On ``pacs.study_stable`` the study's row is set to ``queued`` (in a committed transaction)
   and only then a job is put on the queue. If the queue is unreachable the row stays queued.
2. A worker *claims* the row with a compare-and-set update (``queued`` -> ``running``, or a
   ``running`` row whose heartbeat is stale) and beats a heartbeat while it works. A second
   copy of the job, or one for a study someone else is analysing, finds nothing to claim.
3. A sweep (at start-up of every process that runs workers, then every half
   ``ai_stale_seconds``) puts back to ``queued`` and re-enqueues the rows whose worker stopped
   beating (killed, out of memory, host gone), and re-enqueues rows queued for too long (a lost
   message). After ``MAX_ATTEMPTS`` the row is ``failed`` with the reason, and the failure is
   listed in ``job_failures``.
4. The job is idempotent: results go into the archive under UIDs derived from the study, the
   model and the images (a second store is "already present"), and the rows are replaced, not
   added to. A study whose images have not changed since its last analysis is not analysed
   again (``source_fingerprint``); our own SR and overlays are not images to analyse.

Bad input (a study with nothing to analyse, corrupt pixels, no laterality) is not a failure:
the study is ``done`` with priority ``not_analysed`` and the reason, and the queue goes on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from pydicom import Dataset, dcmread, dcmwrite
from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from qamqor.ai.analysis import (
    ImageAnalysis,
    StudySummary,
    analyse_dataset,
    analysis_error_reason,
    combine,
)
from qamqor.ai.enums import JobStatus, Priority
from qamqor.ai.errors import AIError
from qamqor.ai.events import PRIORITY_SET as PRIORITY_SET  # named here before ai/events.py
from qamqor.ai.models import AIFinding, AIImage, AIStudy
from qamqor.ai.registry import ModelStore
from qamqor.ai.results import build_overlay, build_report, result_uid
from qamqor.ai.routing import CANDIDATE_SOP_CLASSES, PROJECTION_MODALITIES
from qamqor.core.db import utcnow, write_session
from qamqor.core.errors import QamqorError, redacted
from qamqor.core.events import EventBus
from qamqor.core.i18n import N_, Message, messages_to_json
from qamqor.core.jobs import JobQueue, PermanentJobError
from qamqor.core.models import JobFailure
from qamqor.pacs import ArchiveService, StoreResult, parse_part10, study_instances, study_of

logger = logging.getLogger(__name__)

JOB_NAME = "ai.analyse_study"
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Candidate:
    sop_instance_uid: str
    series_instance_uid: str


@dataclass
class StudyOutcome:
    summary: StudySummary
    analyses: list[ImageAnalysis]
    series_of: dict[str, str]
    report_uid: str
    """The SR's SOP Instance UID ("" when nothing was analysed); derived, so known up front."""
    overlays: dict[str, str]
    """Overlay SOP Instance UID by source image."""
    fingerprint: str
    headers: dict[str, Dataset] = field(default_factory=dict, repr=False)
    pixels: dict[str, Any] = field(default_factory=dict, repr=False)


def fingerprint(candidates: list[Candidate]) -> str:
    joined = "\n".join(sorted(c.sop_instance_uid for c in candidates))
    return hashlib.sha256(joined.encode()).hexdigest()


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount)


class AIPipeline:
    """Listens for stable studies, runs their analyses as jobs, sweeps up after dead workers.

    One per process that announces stable studies (``qamqor serve``) or runs workers
    (``qamqor serve``, ``qamqor worker``).
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        archive: ArchiveService,
        models: ModelStore,
        queue: JobQueue | None,
        stale_seconds: float = 60.0,
        events: EventBus | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.archive = archive
        self.models = models
        self.queue = queue
        self.stale = timedelta(seconds=stale_seconds)
        self.requeue_after = timedelta(seconds=max(10 * stale_seconds, 30.0))
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"[:100]
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.events = events
        if queue is not None:
            queue.register(JOB_NAME, self.analyse_study, retries=MAX_ATTEMPTS - 1, retry_delay=5)

    # Queueing -----------------------------------------------------------------------------
    def candidates(self, session: Session, study_instance_uid: str) -> list[Candidate]:
        """The study's instances that may be radiographs or mammograms (from the index)."""
        rows = study_instances(
            session,
            study_instance_uid,
            sop_classes=CANDIDATE_SOP_CLASSES,
            modalities=PROJECTION_MODALITIES,
        )
        return [Candidate(r.sop_instance_uid, r.series_instance_uid) for r in rows]

    def on_study_stable(self, study_instance_uid: str) -> None:
        """Queue the study's analysis unless its images were analysed already."""
        if self.request(study_instance_uid):
            self._enqueue(study_instance_uid)

    def reanalyse(self, study_instance_uid: str) -> bool:
        """Queue the study again even if its images were analysed (a new model, a failure that
        was fixed); False when the archive has no such study."""
        with self.session_factory() as session:
            known = study_of(session, study_instance_uid)
        if known is None:
            return False
        if self.request(study_instance_uid, force=True):
            self._enqueue(study_instance_uid)
        return True

    def request(self, study_instance_uid: str, *, force: bool = False) -> bool:
        """Mark the study queued; True when a job must be enqueued."""
        for _ in range(2):  # a concurrent first insert of the same row: read it again
            try:
                return self._request(study_instance_uid, force=force)
            except IntegrityError:
                continue
        return False

    def _request(self, study_instance_uid: str, *, force: bool) -> bool:
        now = utcnow()
        with write_session(self.session_factory) as session:
            candidates = self.candidates(session, study_instance_uid)
            current = fingerprint(candidates)
            row = session.scalar(
                select(AIStudy)
                .where(AIStudy.study_instance_uid == study_instance_uid)
                .with_for_update()
            )
            if row is None:
                row = AIStudy(study_instance_uid=study_instance_uid, queued_at=now)
                session.add(row)
            elif (
                not force
                and row.source_fingerprint == current
                and row.status in (JobStatus.DONE, JobStatus.QUEUED, JobStatus.RUNNING)
            ):
                return False  # nothing new (e.g. our own results just arrived in the study)
            row.source_fingerprint = current
            if not candidates:
                study = study_of(session, study_instance_uid)
                modalities = study.modalities_in_study if study is not None else ""
                row.status = JobStatus.DONE
                row.task = ""
                row.score = None
                row.priority = Priority.NOT_ANALYSED.value
                row.priority_rank = Priority.NOT_ANALYSED.rank
                row.model = ""
                _set_reasons(
                    row,
                    [
                        Message(
                            N_(
                                "no chest radiograph or mammogram in the study "
                                "(modalities: %(modalities)s)"
                            ),
                            modalities=(modalities or "").replace("\\", ", ") or "-",
                        )
                    ],
                )
                row.finished_at = now
                row.priority_at = now
                row.images.clear()
                return False
            row.status = JobStatus.QUEUED
            row.queued_at = now
            row.attempts = 0
            row.worker = ""
            return True

    def _enqueue(self, study_instance_uid: str) -> None:
        if self.queue is None:
            return
        try:
            self.queue.enqueue(JOB_NAME, study_instance_uid)
        except Exception as exc:  # the row stays queued; the sweep enqueues it again
            logger.error(
                "enqueueing AI job for %s failed: %s", study_instance_uid, type(exc).__name__
            )

    # The job ------------------------------------------------------------------------------
    def analyse_study(self, study_instance_uid: str) -> None:
        """The job: claim, analyse, set the priority, store the DICOM results, release.

        The priority and the rows are committed as soon as the images are analysed (the
        worklist re-orders then); the SR and overlays follow, and only then is the study
        ``done``. Idempotent.
        """
        if not self._claim(study_instance_uid):
            return
        try:
            with self._heartbeat(study_instance_uid):
                outcome = self._analyse(study_instance_uid)
                self._store(study_instance_uid, outcome)
                self._write_dicom(study_instance_uid, outcome)
                self._finish(study_instance_uid)
        except BaseException as exc:
            try:
                self._failed(study_instance_uid, exc)
            except Exception as inner:  # the database is away too: the sweep will see the row
                logger.error("recording the AI failure failed: %s", type(inner).__name__)
            raise
        logger.info(
            "AI analysis of %s: %s (%s)",
            study_instance_uid,
            outcome.summary.priority.value,
            outcome.summary.model or "; ".join(m.english() for m in outcome.summary.reasons),
        )

    def _claim(self, study_instance_uid: str) -> bool:
        now = utcnow()
        with write_session(self.session_factory) as session:
            claimed = _rowcount(
                session.execute(
                    update(AIStudy)
                    .where(
                        AIStudy.study_instance_uid == study_instance_uid,
                        (AIStudy.status == JobStatus.QUEUED)
                        | (
                            (AIStudy.status == JobStatus.RUNNING)
                            & (AIStudy.heartbeat_at < now - self.stale)
                        ),
                    )
                    .values(
                        status=JobStatus.RUNNING,
                        claimed_at=now,
                        heartbeat_at=now,
                        attempts=AIStudy.attempts + 1,
                        worker=self.worker_id,
                    )
                )
            )
        return claimed == 1

    @contextmanager
    def _heartbeat(self, study_instance_uid: str) -> Iterator[None]:
        stop = threading.Event()
        interval = max(self.stale.total_seconds() / 4, 0.2)

        def beat() -> None:
            while not stop.wait(interval):
                try:
                    with write_session(self.session_factory) as session:
                        session.execute(
                            update(AIStudy)
                            .where(
                                AIStudy.study_instance_uid == study_instance_uid,
                                AIStudy.status == JobStatus.RUNNING,
                                AIStudy.worker == self.worker_id,
                            )
                            .values(heartbeat_at=utcnow())
                        )
                except Exception as exc:  # a missed beat is not fatal; the next one may work
                    logger.warning("AI heartbeat failed: %s", type(exc).__name__)

        thread = threading.Thread(target=beat, name="ai-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def _failed(self, study_instance_uid: str, exc: BaseException) -> None:
        permanent = isinstance(exc, PermanentJobError) or (
            isinstance(exc, QamqorError) and exc.permanent
        )
        reason = analysis_error_reason(exc)
        logger.error("AI analysis of %s failed: %s", study_instance_uid, type(exc).__name__)
        with write_session(self.session_factory) as session:
            row = session.scalar(
                select(AIStudy).where(AIStudy.study_instance_uid == study_instance_uid)
            )
            if row is None:
                return
            if permanent or row.attempts >= MAX_ATTEMPTS:
                self._mark_failed(row, reason)
            else:
                row.status = JobStatus.QUEUED  # Huey retries it; the sweep if that is lost
                row.queued_at = utcnow()
                _set_reasons(row, [reason])
                row.worker = ""

    @staticmethod
    def _mark_failed(row: AIStudy, reason: Message) -> None:
        row.status = JobStatus.FAILED
        _set_reasons(row, [reason])
        if row.score is None:  # a priority from images analysed before the failure stays
            row.priority = Priority.NOT_ANALYSED.value
            row.priority_rank = Priority.NOT_ANALYSED.rank
        row.finished_at = utcnow()
        row.heartbeat_at = None
        row.worker = ""

    def _analyse(self, study_instance_uid: str) -> StudyOutcome:
        with self.session_factory() as session:
            candidates = self.candidates(session, study_instance_uid)
        analyses: list[ImageAnalysis] = []
        headers: dict[str, Dataset] = {}
        pixels: dict[str, Any] = {}
        series_of = {c.sop_instance_uid: c.series_instance_uid for c in candidates}
        for candidate in candidates:
            try:
                data = self.archive.read_instance_bytes(candidate.sop_instance_uid)
                ds = dcmread(io.BytesIO(data))
            except Exception as exc:  # unreadable or missing stored file: this image only
                reason = Message(
                    N_("the stored file cannot be read (%(error)s)"), error=type(exc).__name__
                )
                analyses.append(ImageAnalysis(candidate.sop_instance_uid, None, reason))
                continue
            try:
                analysis = analyse_dataset(ds, self.models, keep_image=True)
            except Exception as exc:  # a value of the header pydicom cannot read: this image
                # only (the type, never the message: it may quote the value).
                logger.warning(
                    "AI analysis of image %s failed: %s", candidate.sop_instance_uid, redacted(exc)
                )
                reason = Message(
                    N_("the stored file cannot be read (%(error)s)"), error=type(exc).__name__
                )
                analyses.append(ImageAnalysis(candidate.sop_instance_uid, None, reason))
                continue
            if analysis.image is not None:
                pixels[candidate.sop_instance_uid] = analysis.image.pixels
                analysis.image = None
            if "PixelData" in ds:
                del ds.PixelData
            headers[candidate.sop_instance_uid] = ds
            analyses.append(analysis)
        summary = combine(analyses)
        current = fingerprint(candidates)
        outcome = StudyOutcome(summary, analyses, series_of, "", {}, current, headers, pixels)
        analysed = [a for a in analyses if a.result is not None]
        if analysed:
            models = sorted({a.result.model for a in analysed if a.result is not None})
            outcome.report_uid = result_uid("sr", study_instance_uid, current, *models)
            for analysis in analysed:
                assert analysis.result is not None
                outcome.overlays[analysis.sop_instance_uid] = result_uid(
                    "overlay", analysis.sop_instance_uid, analysis.result.model
                )
        return outcome

    def _write_dicom(self, study_instance_uid: str, outcome: StudyOutcome) -> None:
        """The SR and the overlays, built and stored in the archive like any sender's."""
        analysed = [a for a in outcome.analyses if a.result is not None]
        if not analysed:
            return
        derived: list[Dataset] = []
        with warnings.catch_warnings():
            # highdicom warns about odd header values, quoting them (names): never logged.
            warnings.simplefilter("ignore")
            try:
                derived.append(
                    build_report(
                        sources=outcome.headers,
                        analyses=analysed,
                        summary=outcome.summary,
                        sop_instance_uid=outcome.report_uid,
                        series_instance_uid=result_uid("sr-series", study_instance_uid),
                    )
                )
                for number, analysis in enumerate(analysed, start=1):
                    derived.append(
                        build_overlay(
                            source=outcome.headers[analysis.sop_instance_uid],
                            analysis=analysis,
                            pixels=outcome.pixels.pop(analysis.sop_instance_uid),
                            sop_instance_uid=outcome.overlays[analysis.sop_instance_uid],
                            series_instance_uid=result_uid("overlay-series", study_instance_uid),
                            instance_number=number,
                        )
                    )
            except Exception as exc:
                # highdicom refused what it was given: a bug or an odd header, not worth retrying.
                # Its messages may quote the dataset: only the type goes on.
                raise AIError(
                    f"the DICOM results could not be built ({type(exc).__name__})", permanent=True
                ) from None
        parsed = []
        for dataset in derived:
            buffer = io.BytesIO()
            dcmwrite(buffer, dataset, enforce_file_format=True)
            parsed.append(parse_part10(buffer.getvalue()))
        for result in self.archive.store_instances(parsed, source="ai", derived=True):
            if not isinstance(result, StoreResult):
                raise result

    def _finish(self, study_instance_uid: str) -> None:
        with write_session(self.session_factory) as session:
            session.execute(
                update(AIStudy)
                .where(AIStudy.study_instance_uid == study_instance_uid)
                .values(status=JobStatus.DONE, finished_at=utcnow(), heartbeat_at=None)
            )

    def _store(self, study_instance_uid: str, outcome: StudyOutcome) -> None:
        summary = outcome.summary
        with write_session(self.session_factory) as session:
            row = session.scalar(
                select(AIStudy)
                .where(AIStudy.study_instance_uid == study_instance_uid)
                .with_for_update()
            )
            if row is None:
                return
            session.execute(delete(AIImage).where(AIImage.ai_study_id == row.id))
            for analysis in outcome.analyses:
                result = analysis.result
                image = AIImage(
                    ai_study_id=row.id,
                    sop_instance_uid=analysis.sop_instance_uid,
                    series_instance_uid=outcome.series_of.get(analysis.sop_instance_uid, ""),
                    task=analysis.task.value if analysis.task else "",
                    view=analysis.view[:16],
                    laterality=analysis.laterality[:1],
                    score=result.score if result else None,
                    model=result.model if result else "",
                    reason=analysis.reason.english(),
                    reason_messages=[analysis.reason.to_json()],
                    overlay_sop_instance_uid=outcome.overlays.get(analysis.sop_instance_uid, ""),
                )
                label = analysis.manifest.labels[0] if analysis.manifest else ""
                for rank, finding in enumerate(result.findings if result else (), start=1):
                    image.findings.append(
                        AIFinding(
                            rank=rank, x=finding.x, y=finding.y, score=finding.score, label=label
                        )
                    )
                session.add(image)
            row.task = summary.task.value if summary.task else ""
            row.score = summary.score
            row.priority = summary.priority.value
            row.priority_rank = summary.priority.rank
            row.model = summary.model
            _set_reasons(row, summary.reasons)
            row.breast_scores = ";".join(
                f"{side}={score:.4f}" for side, score in sorted(summary.breast_scores.items())
            )[:100]
            row.source_fingerprint = outcome.fingerprint
            row.report_sop_instance_uid = outcome.report_uid
            row.priority_at = utcnow()
        if self.events is not None:
            self.events.publish(
                PRIORITY_SET,
                study_instance_uid=study_instance_uid,
                priority=summary.priority.value,
            )

    # The sweep ----------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Re-queue analyses whose worker died, or whose message was lost; returns their UIDs."""
        now = utcnow()
        requeued: list[str] = []
        with write_session(self.session_factory) as session:
            stale_rows = session.execute(
                select(AIStudy.id, AIStudy.study_instance_uid, AIStudy.attempts)
                .where(AIStudy.status == JobStatus.RUNNING, AIStudy.heartbeat_at < now - self.stale)
                .limit(500)
            ).all()
            for row_id, uid, attempts in stale_rows:
                still_stale = (
                    AIStudy.id == row_id,
                    AIStudy.status == JobStatus.RUNNING,
                    AIStudy.heartbeat_at < now - self.stale,
                )
                if attempts >= MAX_ATTEMPTS:
                    reason = Message(
                        N_(
                            "the worker stopped %(attempts)d times while analysing this study "
                            "(killed, out of memory, or its host went away)"
                        ),
                        attempts=attempts,
                    )
                    if _rowcount(
                        session.execute(
                            update(AIStudy)
                            .where(*still_stale)
                            .values(
                                status=JobStatus.FAILED,
                                reason=reason.english(),
                                reason_messages=[reason.to_json()],
                                priority=Priority.NOT_ANALYSED.value,
                                priority_rank=Priority.NOT_ANALYSED.rank,
                                finished_at=now,
                                heartbeat_at=None,
                                worker="",
                            )
                        )
                    ):
                        session.add(
                            JobFailure(
                                job=JOB_NAME,
                                task_id="sweep",
                                arguments=uid,
                                error_type="WorkerLost",
                                reason=reason.english(),
                            )
                        )
                    continue
                if _rowcount(
                    session.execute(
                        update(AIStudy)
                        .where(*still_stale)
                        .values(status=JobStatus.QUEUED, queued_at=now, worker="")
                    )
                ):
                    requeued.append(uid)
            lost = session.execute(
                select(AIStudy.id, AIStudy.study_instance_uid, AIStudy.queued_at)
                .where(
                    AIStudy.status == JobStatus.QUEUED,
                    AIStudy.queued_at < now - self.requeue_after,
                )
                .limit(500)
            ).all()
            for row_id, uid, queued_at in lost:
                if _rowcount(
                    session.execute(
                        update(AIStudy)
                        .where(AIStudy.id == row_id, AIStudy.queued_at == queued_at)
                        .values(queued_at=now)
                    )
                ):
                    requeued.append(uid)
        for uid in requeued:
            logger.warning("AI analysis of %s re-queued (worker lost or message lost)", uid)
            self._enqueue(uid)
        return requeued

    def start_sweeper(self) -> None:
        """Sweep now, then every half ``ai_stale_seconds``, in a background thread."""
        interval = max(self.stale.total_seconds() / 2, 0.5)

        def run() -> None:
            while True:
                try:
                    self.sweep()
                except Exception as exc:  # keep sweeping through a database hiccup
                    logger.error("AI sweep failed: %s", type(exc).__name__)
                if self._stop.wait(interval):
                    return

        self._sweeper = threading.Thread(target=run, name="ai-sweeper", daemon=True)
        self._sweeper.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)


def _set_reasons(row: AIStudy, reasons: list[Message]) -> None:
    row.reason = "; ".join(m.english() for m in reasons)
    row.reason_messages = messages_to_json(reasons)
