"""The index writer: the rows of staged instances, committed in groups.

Stores that arrive while another is committing are indexed together in one transaction
(group commit): each still gets its own outcome, and is answered only once the transaction
holding its row has committed. One per ``ArchiveService``; thread-safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from qamqor.core.db import utcnow
from qamqor.pacs.errors import StorageUnavailableError
from qamqor.pacs.parsing import ParsedInstance
from qamqor.pacs.statements import (
    HotStatements,
    find_or_insert,
    patient_row,
    series_row,
    study_row,
)
from qamqor.pacs.storage import StagedFile
from qamqor.pacs.stored import StoredRef, StoreOutcome

logger = logging.getLogger(__name__)

#: Most instances indexed in one transaction (group commit, STOW-RS batches).
MAX_GROUP = 64
#: Transactions retried after a PostgreSQL deadlock or serialization failure.
_RETRIES = 3
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


@dataclass(eq=False)
class Pending:
    """One instance between staging and its answer."""

    parsed: ParsedInstance
    ref: StoredRef
    source: str
    staged: StagedFile
    row: dict[str, Any]
    """The instance row's values that come from the file, read before the index is locked."""
    outcome: StoreOutcome | None = None
    error: Exception | None = None
    known: tuple[int, int] | None = None
    """(series pk, study pk) once committed."""
    finished: bool = False
    """Set, under the group lock, once ``outcome`` or ``error`` is final."""


#: Each store's outcome and (series pk, study pk), or why it failed.
_Outcomes = dict[Pending, tuple[StoreOutcome, tuple[int, int] | None] | Exception]


def _statement_values(store: Pending, known: tuple[int, int]) -> dict[str, Any]:
    """The parameters of the instance statements: the row from the file, its series and
    study keys (``known``), and the time (received, and the study's last instance)."""
    now = utcnow()
    return {
        **store.row,
        "series_pk": known[0],
        "study_pk": known[1],
        "received_at": now,
        "now": now,
    }


class _RolledBack(Exception):
    """An instance's rows failed and were undone to its savepoint; the transaction goes on."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error


class _Disconnected(Exception):
    """The index connection broke before the commit: nothing of the transaction was written."""


class _ItemFailed(Exception):
    """Some instances of a transaction cannot be indexed: roll back, go on without them."""

    def __init__(self, failures: dict[Pending, Exception]) -> None:
        super().__init__()
        self.failures = failures


class IndexWriter:
    """Commits the index rows of staged instances (group commit; module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._known_series: dict[str, tuple[int, int]] = {}
        self._known_sop_classes: set[tuple[int, str]] = set()
        self._group = threading.Condition()
        self._queue: list[Pending] = []
        self._committing = False
        # The connection every index transaction runs on, kept open between them (no pool
        # checkout per transaction); only the thread that holds ``_committing`` uses it.
        self.connection: Connection | None = None
        self._connection_pid = 0
        self._hot: dict[str, HotStatements] = {}
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self._writers_lock_path = (
            f"{database}.writers" if database and database != ":memory:" else None
        )
        self._writers_lock_fd = -1
        self._writers_lock_pid = 0

    def close(self) -> None:
        """Close the index connection kept open (before disposing the engine)."""
        with self._group:
            if not self._committing:
                self._close_connection()
                if self._writers_lock_fd >= 0 and self._writers_lock_pid == os.getpid():
                    os.close(self._writers_lock_fd)
                self._writers_lock_fd, self._writers_lock_pid = -1, 0

    def _writer_connection(self) -> Connection:
        writer = self.connection
        if (
            writer is None
            or writer.closed
            or writer.invalidated
            or self._connection_pid != os.getpid()  # never share a connection with a fork
        ):
            options = {"sqlite_immediate": True} if self.engine.dialect.name == "sqlite" else {}
            writer = self.connection = self.engine.connect().execution_options(**options)
            self._connection_pid = os.getpid()
        return writer

    def _close_connection(self, *, invalidate: bool = False) -> None:
        writer, self.connection = self.connection, None
        if writer is not None and self._connection_pid == os.getpid():
            with contextlib.suppress(Exception):
                if invalidate:
                    writer.invalidate()  # broken: not back into the pool
                else:
                    writer.close()

    def _hot_statements(self, connection: Connection) -> HotStatements:
        hot = self._hot.get(connection.dialect.name)
        if hot is None:
            hot = self._hot[connection.dialect.name] = HotStatements.for_dialect(connection.dialect)
        return hot

    def index(self, stores: list[Pending]) -> None:
        """Commit the rows of ``stores``: in a transaction of their own, or in one that
        another thread is about to start (group commit); returns once every one is final."""
        with self._group:
            self._queue.extend(stores)
        while True:
            with self._group:
                while self._committing and not all(s.finished for s in stores):
                    self._group.wait()
                if all(s.finished for s in stores):
                    return
                # This thread commits for everyone waiting (its own stores among them).
                self._committing = True
            batch: list[Pending] = []
            try:
                with self._writers_turn():
                    # Taken once this process may write: what arrived while it waited for the
                    # other processes' transactions goes into this one (larger groups, fewer
                    # commits, when several processes store at once).
                    with self._group:
                        batch = self._queue[:MAX_GROUP]
                        del self._queue[:MAX_GROUP]
                    self._commit(batch)
            finally:
                with self._group:
                    for store in batch:
                        if store.outcome is None and store.error is None:
                            store.error = StorageUnavailableError(
                                "the archive's database cannot be written"
                            )
                        store.finished = True
                    self._committing = False
                    self._group.notify_all()

    def _commit(self, batch: list[Pending]) -> None:
        """Index ``batch`` in one transaction; sets each store's outcome or error."""
        # One order for every transaction: study rows are locked in the order of their UIDs,
        # so that two transactions of several studies (PostgreSQL; SQLite has one writer)
        # seldom wait for each other in a cycle. When they do (a new patient's row inserted
        # by both), PostgreSQL aborts one and its batch is written again.
        todo = sorted(batch, key=lambda s: (s.ref.study_instance_uid, s.ref.series_instance_uid))
        retries = 0
        while todo:
            try:
                outcomes = self._write(todo)
            except _ItemFailed as failed:
                for store, error in failed.failures.items():
                    store.error = error
                todo = [s for s in todo if s not in failed.failures]
                continue
            except _Disconnected:
                # The kept connection was gone (database restarted, say): as a pool's
                # pre-ping would, try again on a new one.
                if retries < _RETRIES:
                    retries += 1
                    continue
                logger.error("indexing %d instances failed: connection lost", len(todo))
                for store in todo:
                    store.error = StorageUnavailableError(
                        "the archive's database cannot be written"
                    )
                return
            except OperationalError as exc:
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate in _RETRYABLE_SQLSTATES and retries < _RETRIES:
                    retries += 1
                    continue
                logger.error("indexing %d instances failed: %s", len(todo), type(exc).__name__)
                for store in todo:
                    store.error = StorageUnavailableError(
                        "the archive's database cannot be written"
                    )
                return
            except Exception as exc:
                logger.error("indexing %d instances failed: %s", len(todo), type(exc).__name__)
                for store in todo:
                    store.error = exc
                return
            for store in todo:
                result = outcomes[store]
                if isinstance(result, Exception):
                    store.error = result
                    continue
                store.outcome, store.known = result
                if store.known is not None:
                    self._remember(store.ref, store.known)
            return

    @contextlib.contextmanager
    def _writers_turn(self) -> Iterator[None]:
        """On an SQLite file, wait for this process's turn to write in a file lock.

        SQLite lets one writer in at a time; one that finds the database locked sleeps and
        tries again (1, 2, 5, 10 ms, ...), so with several acceptor processes storing at once
        most stores waited for a sleep to end rather than for the other writer. ``flock``
        wakes the next writer as soon as the lock is released. Only the archive's writers
        take it; any other writer still meets SQLite's own lock, as before.
        """
        path = self._writers_lock_path
        if path is None:
            yield
            return
        try:
            if self._writers_lock_pid != os.getpid():
                self._writers_lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                self._writers_lock_pid = os.getpid()
            fd = self._writers_lock_fd
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # SQLite's own lock still keeps writers apart
            logger.warning("index writers' lock unavailable: %s", type(exc).__name__)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _write(self, stores: list[Pending]) -> _Outcomes:
        """One transaction: every store's rows, then the commit (in the writers' turn)."""
        connection = self._writer_connection()
        if len(stores) == 1:
            alone = self._write_alone(connection, stores[0])
            if alone is not None:
                return alone
        try:
            transaction = connection.begin()
        except BaseException:
            self._close_connection()
            raise
        try:
            outcomes = self._rows(connection, stores)
        except BaseException as exc:
            lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
            try:
                transaction.rollback()
            except Exception:
                lost = True
            if lost or not isinstance(exc, _ItemFailed):
                self._close_connection(invalidate=lost)  # a fresh connection for the next one
            if lost and not isinstance(exc, _ItemFailed):
                raise _Disconnected() from exc  # nothing was committed: write them again
            raise
        try:
            transaction.commit()
        except BaseException:
            self._close_connection()
            raise
        return outcomes

    def _write_alone(self, connection: Connection, store: Pending) -> _Outcomes | None:
        """On PostgreSQL, an instance of a series and kind its study has already: its row and
        both counts in one statement, which is a transaction of its own (autocommit): one
        round trip where ``BEGIN``, the statement and ``COMMIT`` took three. None where the
        instance needs more (then ``_write`` makes the transaction)."""
        hot = self._hot.get(connection.dialect.name)
        if hot is None or hot.store_and_count is None:
            return None
        ref = store.ref
        known = self._known_series.get(ref.series_instance_uid)
        if known is None or (known[1], ref.sop_class_uid) not in self._known_sop_classes:
            return None
        row = _statement_values(store, known)
        driver: Any = connection.connection.driver_connection
        try:
            driver.autocommit = True
            try:
                stored = hot.store_and_count.rows(connection, row)
            finally:
                try:
                    driver.autocommit = False
                except Exception:
                    # Never leave the writer in autocommit (a group's rows would commit one
                    # by one): a broken connection is closed, the next store gets a new one.
                    self._close_connection(invalidate=True)
        except BaseException as exc:
            lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
            self._close_connection(invalidate=lost)  # a fresh connection for the next one
            if lost:
                raise _Disconnected() from exc  # nothing was written: write it again
            if isinstance(exc, OperationalError) or not isinstance(exc, Exception):
                raise
            logger.error("indexing %s failed: %s", ref.sop_instance_uid, type(exc).__name__)
            raise _ItemFailed({store: exc}) from None
        outcome = StoreOutcome.STORED if stored else StoreOutcome.ALREADY_PRESENT
        return {store: (outcome, known)}

    def _rows(self, connection: Connection, stores: list[Pending]) -> _Outcomes:
        """Every store's rows in the open transaction."""
        outcomes: _Outcomes = {}
        seen_series: dict[str, tuple[int, int]] = {}
        seen_classes: set[tuple[int, str]] = set()
        for store in stores:
            try:
                outcomes[store] = self._insert_rows(connection, store, seen_series, seen_classes)
            except _RolledBack as failed:
                outcomes[store] = failed.error  # undone to its savepoint: go on
            except OperationalError:
                raise
            except Exception as exc:
                logger.error(
                    "indexing %s failed: %s", store.ref.sop_instance_uid, type(exc).__name__
                )
                raise _ItemFailed({store: exc}) from None
        return outcomes

    def _insert_rows(
        self,
        connection: Connection,
        store: Pending,
        seen_series: dict[str, tuple[int, int]],
        seen_classes: set[tuple[int, str]],
    ) -> tuple[StoreOutcome, tuple[int, int] | None]:
        """The rows of one instance; ``seen_*`` hold what this transaction created."""
        ref = store.ref
        known = seen_series.get(ref.series_instance_uid) or self._known_series.get(
            ref.series_instance_uid
        )
        if known is None:
            # Rare (the first instance of a series this process sees): rows may be created,
            # and must go again if the instance turns out to be a second copy.
            hot = self._hot_statements(connection)
            hot.savepoint.rows(connection, {})
            try:
                known, series_created = self._parent_rows(connection, store)
                outcome = self._instance_rows(
                    connection, store, known, series_created, seen_classes
                )
            except OperationalError:
                raise
            except Exception as exc:
                logger.error("indexing %s failed: %s", ref.sop_instance_uid, type(exc).__name__)
                hot.undo_to_savepoint(connection)
                raise _RolledBack(exc) from None
            if outcome is StoreOutcome.ALREADY_PRESENT:
                hot.undo_to_savepoint(connection)
                return outcome, None
            hot.release_savepoint.rows(connection, {})
        else:
            outcome = self._instance_rows(connection, store, known, False, seen_classes)
        if outcome is StoreOutcome.STORED:
            seen_series[ref.series_instance_uid] = known
            seen_classes.add((known[1], ref.sop_class_uid))
        return outcome, known

    def _parent_rows(self, connection: Connection, store: Pending) -> tuple[tuple[int, int], bool]:
        """Patient, study and series rows of an instance (found or created)."""
        values = store.parsed.values
        ref = store.ref
        hot = self._hot_statements(connection)
        now = utcnow()
        patient_pk, _ = find_or_insert(
            connection, hot.find_patient, hot.insert_patient, patient_row(values, now)
        )
        study_pk, _ = find_or_insert(
            connection, hot.find_study, hot.insert_study, study_row(values, ref, patient_pk, now)
        )
        # Lock the study row before the series (patient -> study -> series everywhere).
        hot.lock_study.rows(connection, {"study_pk": study_pk})
        series_pk, series_created = find_or_insert(
            connection, hot.find_series, hot.insert_series, series_row(values, ref, study_pk, now)
        )
        return (series_pk, study_pk), series_created

    def _instance_rows(
        self,
        connection: Connection,
        store: Pending,
        known: tuple[int, int],
        series_created: bool,
        seen_classes: set[tuple[int, str]],
    ) -> StoreOutcome:
        """The instance row and the counts it changes; ``ALREADY_PRESENT`` changes nothing."""
        ref = store.ref
        study_pk = known[1]
        hot = self._hot_statements(connection)
        row = _statement_values(store, known)
        now = row["now"]
        class_key = (study_pk, ref.sop_class_uid)
        lists_change = series_created or (
            class_key not in self._known_sop_classes and class_key not in seen_classes
        )
        if not lists_change and hot.store_and_count is not None:
            # The usual case on PostgreSQL: one round trip (archived already: no row back).
            if hot.store_and_count.rows(connection, row):
                return StoreOutcome.STORED
            return StoreOutcome.ALREADY_PRESENT
        if not hot.insert_instance.rows(connection, row):
            return StoreOutcome.ALREADY_PRESENT  # archived already (or earlier in this batch)

        # Row locks are taken study first, then series, in every path: no deadlocks.
        if lists_change:
            # Rare: the study's lists change (and maybe its series count).
            ((modalities_text, sop_classes_text),) = hot.study_lists.rows(connection, row)
            modalities = set(filter(None, modalities_text.split("\\")))
            modalities.add(ref.modality)
            sop_classes = set(filter(None, sop_classes_text.split("\\")))
            sop_classes.add(ref.sop_class_uid)
            count = hot.count_study_lists_new_series if series_created else hot.count_study_lists
            count.rows(
                connection,
                {
                    "study_pk": study_pk,
                    "now": now,
                    "rearm": row["rearm"],
                    "modalities": "\\".join(sorted(filter(None, modalities)))[:128],
                    "sop_classes": "\\".join(sorted(sop_classes))[:1024],
                },
            )
        else:
            hot.count_study.rows(connection, row)
        hot.count_series.rows(connection, row)
        return StoreOutcome.STORED

    def _remember(self, ref: StoredRef, known: tuple[int, int]) -> None:
        """Cache keys of committed rows: later instances of a series skip three lookups.

        Rows are never deleted while the process runs (deletion must clear these caches).
        """
        if len(self._known_series) > 50_000:
            self._known_series.clear()
            self._known_sop_classes.clear()
        self._known_series[ref.series_instance_uid] = known
        self._known_sop_classes.add((known[1], ref.sop_class_uid))
