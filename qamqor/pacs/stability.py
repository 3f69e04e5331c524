"""Announces "study stable": no new instance for ``study_stable_seconds``.

A modality sends a study as many C-STOREs with no end marker; listeners (AI triage) want the
whole study. A study becomes stable again after each new image; a report, presentation state,
key object selection or encapsulated document stored into it (AI results, signed reports:
``ParsedInstance.is_image`` is false) leaves it as it was. Several processes may watch
one database: a compare-and-set update makes exactly one of them announce each time.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker

from qamqor.core.db import utcnow
from qamqor.core.events import EventBus
from qamqor.pacs.models import Study

logger = logging.getLogger(__name__)

#: Event: payload ``study_instance_uid: str``.
STUDY_STABLE = "pacs.study_stable"


class StableStudyWatcher:
    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        events: EventBus,
        quiet_seconds: float,
        poll_seconds: float = 0.5,
    ) -> None:
        self.session_factory = session_factory
        self.events = events
        self.quiet = timedelta(seconds=quiet_seconds)
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> list[str]:
        """Announce every study that has just become stable; return their UIDs."""
        now = utcnow()
        announced: list[str] = []
        with self.session_factory() as session:
            candidates = session.execute(
                select(Study.id, Study.study_instance_uid, Study.last_instance_at)
                .where(Study.stable_at.is_(None), Study.last_instance_at <= now - self.quiet)
                .order_by(Study.last_instance_at)
                .limit(500)
            ).all()
            for study_pk, uid, last_instance_at in candidates:
                claimed = cast(
                    CursorResult[Any],
                    session.execute(
                        update(Study)
                        .where(
                            Study.id == study_pk,
                            Study.stable_at.is_(None),
                            Study.last_instance_at == last_instance_at,
                        )
                        .values(stable_at=now)
                    ),
                ).rowcount
                session.commit()
                if claimed:
                    announced.append(uid)
        for uid in announced:
            self.events.publish(STUDY_STABLE, study_instance_uid=uid)
        return announced

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_once()
            except Exception as exc:  # keep watching through a database hiccup
                logger.error("stable-study check failed: %s", type(exc).__name__)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stable-studies", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
