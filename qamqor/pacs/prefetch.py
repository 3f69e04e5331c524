"""Decode a study's images ahead, when it becomes stable, so that its first opening in the
viewer reads decoded frames instead of decoding JPEG 2000 (1.5-2 s for a chest film)."""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import threading

from pydicom import Dataset, dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from qamqor.core.errors import redacted
from qamqor.pacs.models import Instance, Series, Study
from qamqor.pacs.render_cache import RenderCache
from qamqor.pacs.storage import Storage

logger = logging.getLogger(__name__)


def prerender_study(
    session_factory: sessionmaker[Session],
    storage: Storage,
    cache: RenderCache,
    study_instance_uid: str,
) -> int:
    """Decode every image of the study into the render cache; returns the frames written."""
    with session_factory() as session:
        images = session.execute(
            select(Instance.sop_instance_uid, Instance.file_path)
            .join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_instance_uid == study_instance_uid, Instance.rows.is_not(None))
            .order_by(Series.series_number, Instance.instance_number)
        ).all()
    written = 0
    for uid, path in images:

        def load(stored: str = path) -> Dataset:
            return dcmread(io.BytesIO(storage.read(stored)))

        try:
            written += cache.prerender(f"{uid}:{path}", load)
        except Exception as exc:  # one unreadable image must not stop the others
            logger.warning("not decoded ahead: %s", redacted(exc))
    return written


class Prerenderer:
    """Decodes stable studies ahead in one background thread, at most ``backlog`` waiting
    (more are dropped: they are rendered on their first opening instead)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        storage: Storage,
        cache: RenderCache,
        *,
        backlog: int = 256,
    ) -> None:
        self.session_factory = session_factory
        self.storage = storage
        self.cache = cache
        self._waiting: queue.Queue[str | None] = queue.Queue(maxsize=backlog)
        self._thread = threading.Thread(target=self._run, name="qamqor-prerender", daemon=True)
        self.done = threading.Event()
        """Set each time the backlog has been worked off (for tests and benchmarks)."""

    def start(self) -> None:
        self._thread.start()

    def on_study_stable(self, study_instance_uid: str) -> None:
        try:
            self._waiting.put_nowait(study_instance_uid)
            self.done.clear()
        except queue.Full:
            logger.info("prerender backlog full: a study will be rendered when opened")

    def _run(self) -> None:
        while True:
            uid = self._waiting.get()
            if uid is None:
                return
            try:
                prerender_study(self.session_factory, self.storage, self.cache, uid)
            except Exception as exc:
                logger.warning("study not decoded ahead: %s", redacted(exc))
            if self._waiting.empty():
                self.done.set()

    def stop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._waiting.put_nowait(None)
            self._thread.join(timeout=10)
