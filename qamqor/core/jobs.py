"""Background jobs on Huey: SQLite (no server) by default, Redis for many workers.

Capabilities register plain functions as jobs at start-up; arguments are UIDs and ids only
(never patient data). Jobs must be idempotent: Huey may run one again after a crash, and each
capability keeps its own state in the database so that a sweep can re-queue what a dead worker
left unfinished. A job that fails for good is written to ``job_failures`` with its reason.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from huey import RedisHuey, SqliteHuey
from huey.api import Huey, Task, TaskWrapper
from huey.consumer import Consumer
from huey.signals import SIGNAL_ERROR
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qamqor.core.errors import QamqorError, redacted
from qamqor.core.models import JobFailure
from qamqor.core.settings import Settings

logger = logging.getLogger(__name__)


class PermanentJobError(QamqorError):
    """Raise in a job when retrying cannot help (bad input): no retry, straight to failures."""


class UnexpectedJobError(QamqorError):
    """A job failed with an exception that is not Qamqor's: its type and where it was raised,
    without its message (``redacted``), which may quote patient data. Retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=False)


def make_huey(settings: Settings, *, immediate: bool = False) -> Huey:
    if settings.redis_url:
        return RedisHuey("qamqor", url=settings.redis_url, results=False, immediate=immediate)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(
        "qamqor",
        filename=str(settings.data_dir / "jobs.db"),
        results=False,
        immediate=immediate,
    )


class JobQueue:
    """One per process: registers jobs, enqueues them, runs worker threads."""

    def __init__(self, *, huey: Huey, session_factory: sessionmaker[Session] | None = None) -> None:
        self.huey = huey
        self.session_factory = session_factory
        self._jobs: dict[str, TaskWrapper] = {}
        self._consumer: Consumer | None = None
        huey.signal(SIGNAL_ERROR)(self._on_error)

    def register(
        self, name: str, function: Callable[..., None], *, retries: int = 3, retry_delay: int = 10
    ) -> TaskWrapper:
        """Make ``function`` a job called ``name``; returns what ``enqueue`` calls."""

        def run(*args: Any) -> None:
            try:
                function(*args)
            except PermanentJobError:
                raise
            except QamqorError as exc:
                if exc.permanent:
                    raise PermanentJobError(exc.message) from exc
                raise
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
                    raise
                # Huey logs the traceback of what a job raises, its message and the chained
                # exceptions' too: only the redacted summary goes on (``from None``).
                raise UnexpectedJobError(redacted(exc)) from None

        run.__name__ = name
        wrapper = self.huey.task(retries=retries, retry_delay=retry_delay, name=name)(run)
        self._jobs[name] = wrapper
        return wrapper

    def enqueue(self, name: str, *args: Any) -> None:
        self._jobs[name](*args)

    def pending(self) -> int:
        return int(self.huey.pending_count())

    def _on_error(self, signal: str, task: Task, exc: BaseException | None = None) -> None:
        permanent = isinstance(exc, PermanentJobError)
        if permanent:
            task.retries = 0  # retrying bad input cannot help
        summary = exc.message if isinstance(exc, UnexpectedJobError) else type(exc).__name__
        if task.retries and not permanent:
            logger.warning("job %s failed (%s); will retry", task.name, summary)
            return
        logger.error("job %s failed for good: %s", task.name, summary)
        if self.session_factory is None:
            return
        reason = exc.message if isinstance(exc, QamqorError) else ""
        with self.session_factory() as session:
            session.add(
                JobFailure(
                    job=task.name,
                    task_id=str(task.id),
                    arguments=" ".join(str(a) for a in (task.args or ())),
                    error_type=type(exc).__name__,
                    reason=reason,
                )
            )
            session.commit()

    def failures(self, session: Session, *, include_resolved: bool = False) -> list[JobFailure]:
        query = select(JobFailure).order_by(JobFailure.failed_at.desc())
        if not include_resolved:
            query = query.where(JobFailure.resolved.is_(False))
        return list(session.scalars(query))

    def start_workers(self, count: int) -> None:
        """Worker threads in this process (``qamqor serve``); ``stop_workers`` ends them."""
        if count <= 0:
            return
        self._consumer = self.huey.create_consumer(
            workers=count,
            worker_type="thread",
            periodic=True,
            initial_delay=0.05,
            max_delay=0.5,
            backoff=1.1,
            check_worker_health=True,
        )
        # huey's consumer takes SIGINT, SIGTERM and SIGHUP for its own run loop, which is not
        # used here: a stop signal before the web server took them back was swallowed.
        kept = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = {signum: signal.getsignal(signum) for signum in kept} if main_thread else {}
        self._consumer.start()
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def run_worker(self, count: int) -> None:
        """Run workers in the foreground until interrupted (``qamqor worker``)."""
        consumer = self.huey.create_consumer(
            workers=count, worker_type="thread", initial_delay=0.05, max_delay=0.5, backoff=1.1
        )
        consumer.run()

    def stop_workers(self) -> None:
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None
