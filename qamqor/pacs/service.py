"""The archive's service: store instances, find them, read them back.

No networking here: the DIMSE handlers call ``store_instance``, STOW-RS and ``qamqor import``
``store_instances`` (several at once); C-FIND and QIDO-RS call ``qamqor.pacs.query``. The
index rows are committed by ``qamqor.pacs.writer`` (group commit) with the statements of
``qamqor.pacs.statements``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from qamqor.core.events import EventBus
from qamqor.pacs.errors import (
    InstanceNotFoundError,
    InvalidInstanceError,
    StorageUnavailableError,
)
from qamqor.pacs.models import Instance, Patient, Series, Study
from qamqor.pacs.parsing import ParsedInstance
from qamqor.pacs.statements import instance_row, name_search_key
from qamqor.pacs.storage import RecoveryReport, StagedFile, Storage
from qamqor.pacs.stored import StoredRef, StoreOutcome, StoreResult, ref_of
from qamqor.pacs.writer import MAX_GROUP, IndexWriter, Pending

__all__ = [
    "MAX_GROUP",
    "ArchiveService",
    "StoreOutcome",
    "StoreResult",
    "StoredRef",
    "iter_files",
    "name_search_key",
]

logger = logging.getLogger(__name__)


class ArchiveService:
    """Stores and reads instances. One per process; thread-safe.

    Stores that arrive while another is committing are indexed together in one transaction
    (group commit, ``IndexWriter``): each still gets its own outcome, and is answered only
    once the transaction holding its row has committed.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        storage: Storage,
        events: EventBus | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.storage = storage
        self.events = events or EventBus()
        self.engine: Engine = session_factory.kw["bind"]
        self._index_writer = IndexWriter(self.engine)

    def close(self) -> None:
        """Close the index connection this service keeps open (before disposing the engine)."""
        self._index_writer.close()

    # Storing ------------------------------------------------------------------------------
    def store_instance(
        self, parsed: ParsedInstance, *, source: str, derived: bool = False
    ) -> StoreResult:
        """Store a checked instance: file durable and index row committed, or an error.

        Storing a SOP Instance UID that is already archived changes nothing and reports
        ``ALREADY_PRESENT``.
        """
        (result,) = self.store_instances([parsed], source=source, derived=derived)
        if isinstance(result, Exception):
            raise result
        return result

    def store_instances(
        self, parsed: Sequence[ParsedInstance], *, source: str, derived: bool = False
    ) -> list[StoreResult | Exception]:
        """Store checked instances; for each, in order, its result or why it failed.

        Same guarantees as ``store_instance`` for each instance, at a lower price: the files
        are fsync'ed side by side with one fsync of the staging folder, and the index rows
        are committed in one transaction (``MAX_GROUP`` at most). One failure (a row the
        database refuses) fails only its instance. A ``StorageUnavailableError`` says that
        storage or database could not be written; other exceptions are unexpected errors.

        ``derived``: objects Qamqor made from the study itself (AI results and overlays,
        signed reports): stored like any instance, but the study stays "stable", so that
        nothing that listens for stable studies runs again for them.
        """
        results: list[StoreResult | Exception | None] = [None] * len(parsed)
        pending: list[tuple[int, Pending]] = []
        staged_now: list[tuple[int, ParsedInstance, StoredRef, StagedFile, dict[str, Any]]] = []
        indexing = False
        try:
            for index, item in enumerate(parsed):
                # Every value the index takes is read from the file before anything is
                # written: an instance whose values cannot be read fails alone, with no file.
                try:
                    ref = ref_of(item)
                    # No look-up first: a second copy is rare, and the unique index catches it
                    # for the price of one discarded file, where a look-up would cost every
                    # store a query.
                    relative_path = self.storage.relative_path_for(ref.sop_instance_uid)
                    row = instance_row(item, ref, relative_path, source, derived=derived)
                except Exception as exc:
                    logger.error("reading the index values failed: %s", type(exc).__name__)
                    results[index] = InvalidInstanceError(
                        f"the instance's attributes cannot be read ({type(exc).__name__})"
                    )
                    continue
                try:
                    staged = self.storage.write_staged(relative_path, item.data)
                except OSError as exc:
                    logger.error("staging %s failed: %s", ref.sop_instance_uid, type(exc).__name__)
                    results[index] = StorageUnavailableError(
                        "the archive's storage cannot be written"
                    )
                    continue
                staged_now.append((index, item, ref, staged, row))
            if staged_now:
                # Rows before files would break the redo log: the files and their names are
                # durable before their rows are queued for a transaction, so no lock (SQLite's
                # writer, PostgreSQL's study and series rows, the writers' turn) waits for
                # fsyncs.
                try:
                    self.storage.sync_staged([s for _, _, _, s, _ in staged_now])
                except OSError as exc:
                    logger.error("fsync of staged files failed: %s", type(exc).__name__)
                    for index, _, _, staged, _ in staged_now:
                        self.storage.discard(staged)
                        results[index] = StorageUnavailableError(
                            "the archive's storage cannot be written"
                        )
                    staged_now = []
                for index, item, ref, staged, row in staged_now:
                    pending.append((index, Pending(item, ref, source, staged, row)))
                if pending:
                    indexing = True
                    self._index_writer.index([p for _, p in pending])
        except BaseException:
            # Unexpected (the index's own errors are answered per instance): no staged file
            # is left behind. Once rows may have been committed, ``recover`` decides.
            if not indexing:
                for _, _, _, staged, _ in staged_now:
                    self.storage.discard(staged)
            raise

        for index, store in pending:
            if store.outcome is StoreOutcome.STORED:
                self.storage.publish(store.staged)
                results[index] = StoreResult(StoreOutcome.STORED, store.ref)
            else:
                self.storage.discard(store.staged)
                if store.outcome is StoreOutcome.ALREADY_PRESENT:
                    results[index] = StoreResult(StoreOutcome.ALREADY_PRESENT, store.ref)
                else:
                    assert store.error is not None
                    results[index] = store.error
        return [r for r in results if r is not None]

    # Reading ------------------------------------------------------------------------------
    def read_instance_bytes(self, sop_instance_uid: str) -> bytes:
        """The stored Part 10 file of an instance, byte for byte as archived."""
        with self.session_factory() as session:
            path = session.scalar(
                select(Instance.file_path).where(Instance.sop_instance_uid == sop_instance_uid)
            )
        if path is None:
            raise InstanceNotFoundError(f"no instance {sop_instance_uid} in the archive")
        return self.storage.read(path)

    def instances_of(
        self,
        session: Session,
        *,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[Instance]:
        """Instances of a study (or one series of it, or one instance), in series order."""
        query = (
            select(Instance)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_instance_uid)
            .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
        )
        if series_instance_uid:
            query = query.where(Series.series_instance_uid == series_instance_uid)
        if sop_instance_uid:
            query = query.where(Instance.sop_instance_uid == sop_instance_uid)
        return list(session.scalars(query))

    def count(self) -> dict[str, int]:
        with self.session_factory() as session:
            return {
                "patients": session.scalar(select(func.count(Patient.id))) or 0,
                "studies": session.scalar(select(func.count(Study.id))) or 0,
                "series": session.scalar(select(func.count(Series.id))) or 0,
                "instances": session.scalar(select(func.count(Instance.id))) or 0,
            }

    # Start-up -----------------------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Finish or undo stores interrupted by a crash (run once at start-up)."""

        def is_indexed(relative_path: str) -> bool:
            with self.session_factory() as session:
                return (
                    session.scalar(select(Instance.id).where(Instance.file_path == relative_path))
                    is not None
                )

        return self.storage.recover(is_indexed)


def iter_files(paths: Iterable[str]) -> Iterable[str]:
    """Every regular file under the given files and folders, recursively, sorted."""
    import os

    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield os.path.join(root, name)
        else:
            yield path
