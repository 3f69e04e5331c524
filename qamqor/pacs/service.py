"""The archive's service: store instances, find them, read them back.

No networking here: the DIMSE handlers call ``store_instance``, STOW-RS and ``qamqor import``
``store_instances`` (several at once); C-FIND and QIDO-RS call ``qamqor.pacs.query``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import bindparam, exists, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from qamqor.core.db import utcnow
from qamqor.core.events import EventBus
from qamqor.pacs.errors import (
    InstanceNotFoundError,
    InvalidInstanceError,
    StorageUnavailableError,
)
from qamqor.pacs.models import Instance, Patient, Series, Study
from qamqor.pacs.parsing import ParsedInstance
from qamqor.pacs.storage import RecoveryReport, StagedFile, Storage

logger = logging.getLogger(__name__)

#: Event announced after an instance is stored and indexed: payload ``instance: StoredRef``.
INSTANCE_STORED = "pacs.instance_stored"


class StoreOutcome(StrEnum):
    STORED = "stored"
    ALREADY_PRESENT = "already present"


@dataclass(frozen=True)
class StoredRef:
    """UIDs of an instance in the archive (no patient data: safe to log and to pass on)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    ref: StoredRef


def name_search_key(name: str) -> str:
    """The form names are matched in: upper case, trailing empty components dropped."""
    return name.upper().rstrip("^ ")


def _find_or_insert(
    connection: Connection, find: _DriverStatement, insert: _DriverStatement, row: dict[str, Any]
) -> tuple[int, bool]:
    """The primary key of the row ``find`` matches in ``row``, inserting it if absent.

    ``insert`` is ``INSERT .. ON CONFLICT DO NOTHING RETURNING id``: safe against a
    concurrent insert of the same row on PostgreSQL (then found by a second look); on SQLite
    the write lock is held already.
    """
    found = find.rows(connection, row)
    if found:
        return int(found[0][0]), False
    inserted = insert.rows(connection, row)
    if inserted:
        return int(inserted[0][0]), True
    return int(find.rows(connection, row)[0][0]), False


def _find_by(table: Any, *keys: str) -> Any:
    return select(table.c.id).where(
        *(table.c[k] == bindparam(k, type_=table.c[k].type) for k in keys)
    )


def _insert_returning_id(dialect_insert: Any, table: Any, *keys: str) -> Any:
    """Every column but the key is a parameter: no column default is left to an execution
    context (``_DriverStatement`` has none)."""
    columns = [c for c in table.c if not c.primary_key]
    return (
        dialect_insert(table)
        .values({c.name: bindparam(c.name, type_=c.type) for c in columns})
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(table.c.id)
    )


# The hot path's statements, built once.
_INSTANCE_COLUMNS = (
    "sop_instance_uid",
    "series_pk",
    "sop_class_uid",
    "instance_number",
    "transfer_syntax_uid",
    "rows",
    "columns",
    "number_of_frames",
    "bits_allocated",
    "samples_per_pixel",
    "photometric_interpretation",
    "image_laterality",
    "view_position",
    "content_date",
    "content_time",
    "file_path",
    "file_size",
    "source",
    "received_at",
)


def _insert_instance(dialect_insert: Any) -> Any:
    # A second copy of an instance inserts nothing and returns no id: no exception, so the
    # transaction (and the other instances in it) goes on.
    columns = Instance.__table__.c
    return (
        dialect_insert(Instance)
        .values({name: bindparam(name, type_=columns[name].type) for name in _INSTANCE_COLUMNS})
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(Instance.id)
    )


_STUDY = Study.__table__
_SERIES = Series.__table__
_COUNT_SERIES_INSTANCE = (
    update(Series)
    .where(_SERIES.c.id == bindparam("series_pk"))
    .values(number_of_instances=_SERIES.c.number_of_instances + 1)
)
_COUNT_STUDY_INSTANCE = (
    update(Study)
    .where(_STUDY.c.id == bindparam("study_pk"))
    .values(
        number_of_instances=_STUDY.c.number_of_instances + 1,
        last_instance_at=bindparam("now", type_=_STUDY.c.last_instance_at.type),
        stable_at=None,
    )
)


_PATIENT = Patient.__table__
_LOCK_STUDY = select(_STUDY.c.id).where(_STUDY.c.id == bindparam("study_pk")).with_for_update()
_STUDY_LISTS = (
    select(_STUDY.c.modalities_in_study, _STUDY.c.sop_classes_in_study)
    .where(_STUDY.c.id == bindparam("study_pk"))
    .with_for_update()
)


def _count_study_lists(*, new_series: bool) -> Any:
    """A study's counts and its lists of modalities and SOP classes (an instance of a kind
    the study did not have)."""
    changes: dict[str, Any] = {
        "number_of_instances": _STUDY.c.number_of_instances + 1,
        "last_instance_at": bindparam("now", type_=_STUDY.c.last_instance_at.type),
        "stable_at": None,
        "modalities_in_study": bindparam("modalities", type_=_STUDY.c.modalities_in_study.type),
        "sop_classes_in_study": bindparam("sop_classes", type_=_STUDY.c.sop_classes_in_study.type),
    }
    if new_series:
        changes["number_of_series"] = _STUDY.c.number_of_series + 1
    return update(Study).where(_STUDY.c.id == bindparam("study_pk")).values(**changes)


def _store_and_count() -> Any:
    """PostgreSQL: the instance row and both counts in one statement (one round trip).

    Each step runs only if the one before changed a row (a second copy changes nothing), and
    reads its output, so the row locks are still taken instance, study, series in that order.
    """
    inserted = _insert_instance(postgresql.insert).cte("inserted")
    study_counted = (
        _COUNT_STUDY_INSTANCE.where(exists(select(inserted.c.id)))
        .returning(_STUDY.c.id)
        .cte("study_counted")
    )
    series_counted = (
        _COUNT_SERIES_INSTANCE.where(exists(select(study_counted.c.id)))
        .returning(_SERIES.c.id)
        .cte("series_counted")
    )
    return select(inserted.c.id).add_cte(study_counted, series_counted)


class _DriverStatement:
    """A Core statement compiled once for a dialect and run on the driver's own cursor.

    For the few statements every store runs: SQLAlchemy's work per execution (cache key,
    execution context, result object) costs more CPU than the database's. Its compiler still
    writes the SQL and its types still convert the parameters; driver errors are raised as
    SQLAlchemy's (``OperationalError`` and so on) like those of any other statement.
    """

    def __init__(self, statement: Any, dialect: Any) -> None:
        self.compiled = statement.compile(dialect=dialect)
        self.sql = self.compiled.string
        self.dialect = dialect
        binds = {name: bind for bind, name in self.compiled.bind_names.items()}
        self.names: list[str] = (
            list(self.compiled.positiontup) if self.compiled.positional else list(binds)
        )
        self.processors = {
            name: processor
            for name, bind in binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def rows(self, connection: Connection, values: dict[str, Any]) -> list[Any]:
        bound = self.compiled.construct_params(values)
        for name, processor in self.processors.items():
            bound[name] = processor(bound[name])
        params: Any = (
            tuple(bound[name] for name in self.names) if self.compiled.positional else bound
        )
        driver_connection = connection.connection.driver_connection
        assert driver_connection is not None
        cursor = driver_connection.cursor()
        try:
            cursor.execute(self.sql, params)
            return cursor.fetchall() if cursor.description is not None else []
        except self.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(
                self.sql,
                params,
                exc,
                self.dialect.loaded_dbapi.Error,
                connection_invalidated=self.dialect.is_disconnect(exc, driver_connection, cursor),
                dialect=self.dialect,
            ) from exc
        finally:
            cursor.close()


@dataclass(frozen=True)
class _HotStatements:
    """The statements of the store path, compiled once per dialect.

    Those of a new patient, study or series too: a chest film or a mammogram is often the
    only instance of its series, and built and compiled by SQLAlchemy at each use they cost
    several milliseconds more than the instance's own rows.
    """

    insert_instance: _DriverStatement
    count_study: _DriverStatement
    count_series: _DriverStatement
    store_and_count: _DriverStatement | None
    """The three in one statement, where the database can (PostgreSQL)."""
    find_patient: _DriverStatement
    insert_patient: _DriverStatement
    find_study: _DriverStatement
    insert_study: _DriverStatement
    lock_study: _DriverStatement
    find_series: _DriverStatement
    insert_series: _DriverStatement
    study_lists: _DriverStatement
    count_study_lists: _DriverStatement
    count_study_lists_new_series: _DriverStatement
    savepoint: _DriverStatement
    """Before an instance's first rows of a series; SQLAlchemy's ``begin_nested`` and its
    commit cost 150 µs of CPU, the database 3 µs."""
    rollback_to_savepoint: _DriverStatement
    release_savepoint: _DriverStatement

    def undo_to_savepoint(self, connection: Connection) -> None:
        """Back to the savepoint and out of it (the next instance's is a new one)."""
        self.rollback_to_savepoint.rows(connection, {})
        self.release_savepoint.rows(connection, {})

    @classmethod
    def for_dialect(cls, dialect: Any) -> _HotStatements:
        postgres = dialect.name == "postgresql"
        dialect_insert = postgresql.insert if postgres else sqlite.insert

        def compiled(statement: Any) -> _DriverStatement:
            return _DriverStatement(statement, dialect)

        patient_keys = ("patient_id", "issuer_of_patient_id")
        return cls(
            insert_instance=compiled(_insert_instance(dialect_insert)),
            count_study=compiled(_COUNT_STUDY_INSTANCE),
            count_series=compiled(_COUNT_SERIES_INSTANCE),
            store_and_count=compiled(_store_and_count()) if postgres else None,
            find_patient=compiled(_find_by(_PATIENT, *patient_keys)),
            insert_patient=compiled(_insert_returning_id(dialect_insert, _PATIENT, *patient_keys)),
            find_study=compiled(_find_by(_STUDY, "study_instance_uid")),
            insert_study=compiled(
                _insert_returning_id(dialect_insert, _STUDY, "study_instance_uid")
            ),
            lock_study=compiled(_LOCK_STUDY),
            find_series=compiled(_find_by(_SERIES, "series_instance_uid")),
            insert_series=compiled(
                _insert_returning_id(dialect_insert, _SERIES, "series_instance_uid")
            ),
            study_lists=compiled(_STUDY_LISTS),
            count_study_lists=compiled(_count_study_lists(new_series=False)),
            count_study_lists_new_series=compiled(_count_study_lists(new_series=True)),
            savepoint=compiled(text("SAVEPOINT qamqor_rows")),
            rollback_to_savepoint=compiled(text("ROLLBACK TO SAVEPOINT qamqor_rows")),
            release_savepoint=compiled(text("RELEASE SAVEPOINT qamqor_rows")),
        )


#: Most instances indexed in one transaction (group commit, STOW-RS batches).
MAX_GROUP = 64
#: Transactions retried after a PostgreSQL deadlock or serialization failure.
_RETRIES = 3
_RETRYABLE_SQLSTATES = {"40P01", "40001"}


def _ref_of(parsed: ParsedInstance) -> StoredRef:
    return StoredRef(
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        modality=parsed.values.text("Modality", 16),
    )


def _instance_row(
    parsed: ParsedInstance, ref: StoredRef, relative_path: str, source: str
) -> dict[str, Any]:
    """The values of an instance row that come from the file (the keys and times do not)."""
    values = parsed.values
    return {
        "sop_instance_uid": ref.sop_instance_uid,
        "sop_class_uid": ref.sop_class_uid,
        "instance_number": values.integer("InstanceNumber"),
        "transfer_syntax_uid": parsed.transfer_syntax_uid,
        "rows": values.integer("Rows"),
        "columns": values.integer("Columns"),
        "number_of_frames": values.integer("NumberOfFrames"),
        "bits_allocated": values.integer("BitsAllocated"),
        "samples_per_pixel": values.integer("SamplesPerPixel"),
        "photometric_interpretation": values.text("PhotometricInterpretation", 16),
        "image_laterality": values.text("ImageLaterality", 16),
        "view_position": values.text("ViewPosition", 16),
        "content_date": values.text("ContentDate", 8),
        "content_time": values.text("ContentTime", 16),
        "file_path": relative_path,
        "file_size": len(parsed.data),
        "source": source[:64],
    }


def _statement_values(store: _Pending, known: tuple[int, int]) -> dict[str, Any]:
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


@dataclass(eq=False)
class _Pending:
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


class _RolledBack(Exception):
    """An instance's rows failed and were undone to its savepoint; the transaction goes on."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error


class _Disconnected(Exception):
    """The index connection broke before the commit: nothing of the transaction was written."""


class _ItemFailed(Exception):
    """Some instances of a transaction cannot be indexed: roll back, go on without them."""

    def __init__(self, failures: dict[_Pending, Exception]) -> None:
        super().__init__()
        self.failures = failures


class ArchiveService:
    """Stores and reads instances. One per process; thread-safe.

    Stores that arrive while another is committing are indexed together in one transaction
    (group commit): each still gets its own outcome, and is answered only once the
    transaction holding its row has committed.
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
        self._known_series: dict[str, tuple[int, int]] = {}
        self._known_sop_classes: set[tuple[int, str]] = set()
        self._group = threading.Condition()
        self._queue: list[_Pending] = []
        self._committing = False
        # The connection every index transaction runs on, kept open between them (no pool
        # checkout per transaction); only the thread that holds ``_committing`` uses it.
        self._writer: Connection | None = None
        self._writer_pid = 0
        self._hot: dict[str, _HotStatements] = {}
        database = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        self._writers_lock_path = (
            f"{database}.writers" if database and database != ":memory:" else None
        )
        self._writers_lock_fd = -1
        self._writers_lock_pid = 0

    def close(self) -> None:
        """Close the index connection this service keeps open (before disposing the engine)."""
        with self._group:
            if not self._committing:
                self._close_writer()
                if self._writers_lock_fd >= 0 and self._writers_lock_pid == os.getpid():
                    os.close(self._writers_lock_fd)
                self._writers_lock_fd, self._writers_lock_pid = -1, 0

    def _writer_connection(self) -> Connection:
        writer = self._writer
        if (
            writer is None
            or writer.closed
            or writer.invalidated
            or self._writer_pid != os.getpid()  # never share a connection with a forked child
        ):
            options = {"sqlite_immediate": True} if self.engine.dialect.name == "sqlite" else {}
            writer = self._writer = self.engine.connect().execution_options(**options)
            self._writer_pid = os.getpid()
        return writer

    def _close_writer(self, *, invalidate: bool = False) -> None:
        writer, self._writer = self._writer, None
        if writer is not None and self._writer_pid == os.getpid():
            with contextlib.suppress(Exception):
                if invalidate:
                    writer.invalidate()  # broken: not back into the pool
                else:
                    writer.close()

    def _hot_statements(self, connection: Connection) -> _HotStatements:
        hot = self._hot.get(connection.dialect.name)
        if hot is None:
            hot = self._hot[connection.dialect.name] = _HotStatements.for_dialect(
                connection.dialect
            )
        return hot

    # Storing ------------------------------------------------------------------------------
    def store_instance(self, parsed: ParsedInstance, *, source: str) -> StoreResult:
        """Store a checked instance: file durable and index row committed, or an error.

        Storing a SOP Instance UID that is already archived changes nothing and reports
        ``ALREADY_PRESENT``.
        """
        (result,) = self.store_instances([parsed], source=source)
        if isinstance(result, Exception):
            raise result
        return result

    def store_instances(
        self, parsed: Sequence[ParsedInstance], *, source: str
    ) -> list[StoreResult | Exception]:
        """Store checked instances; for each, in order, its result or why it failed.

        Same guarantees as ``store_instance`` for each instance, at a lower price: the files
        are fsync'ed side by side with one fsync of the staging folder, and the index rows
        are committed in one transaction (``MAX_GROUP`` at most). One failure (a row the
        database refuses) fails only its instance. A ``StorageUnavailableError`` says that
        storage or database could not be written; other exceptions are unexpected errors.
        """
        results: list[StoreResult | Exception | None] = [None] * len(parsed)
        pending: list[tuple[int, _Pending]] = []
        staged_now: list[tuple[int, ParsedInstance, StoredRef, StagedFile, dict[str, Any]]] = []
        indexing = False
        try:
            for index, item in enumerate(parsed):
                # Every value the index takes is read from the file before anything is
                # written: an instance whose values cannot be read fails alone, with no file.
                try:
                    ref = _ref_of(item)
                    # No look-up first: a second copy is rare, and the unique index catches it
                    # for the price of one discarded file, where a look-up would cost every
                    # store a query.
                    relative_path = self.storage.relative_path_for(ref.sop_instance_uid)
                    row = _instance_row(item, ref, relative_path, source)
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
                    pending.append((index, _Pending(item, ref, source, staged, row)))
                if pending:
                    indexing = True
                    self._index([p for _, p in pending])
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
                self.events.publish(INSTANCE_STORED, instance=store.ref)
                results[index] = StoreResult(StoreOutcome.STORED, store.ref)
            else:
                self.storage.discard(store.staged)
                if store.outcome is StoreOutcome.ALREADY_PRESENT:
                    results[index] = StoreResult(StoreOutcome.ALREADY_PRESENT, store.ref)
                else:
                    assert store.error is not None
                    results[index] = store.error
        return [r for r in results if r is not None]

    def _index(self, stores: list[_Pending]) -> None:
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
            batch: list[_Pending] = []
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

    def _commit(self, batch: list[_Pending]) -> None:
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

    def _write(
        self, stores: list[_Pending]
    ) -> dict[_Pending, tuple[StoreOutcome, tuple[int, int] | None] | Exception]:
        """One transaction: every store's rows, then the commit (in the writers' turn)."""
        connection = self._writer_connection()
        if len(stores) == 1:
            alone = self._write_alone(connection, stores[0])
            if alone is not None:
                return alone
        try:
            transaction = connection.begin()
        except BaseException:
            self._close_writer()
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
                self._close_writer(invalidate=lost)  # a fresh connection for the next one
            if lost and not isinstance(exc, _ItemFailed):
                raise _Disconnected() from exc  # nothing was committed: write them again
            raise
        try:
            transaction.commit()
        except BaseException:
            self._close_writer()
            raise
        return outcomes

    def _write_alone(
        self, connection: Connection, store: _Pending
    ) -> dict[_Pending, tuple[StoreOutcome, tuple[int, int] | None] | Exception] | None:
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
                    self._close_writer(invalidate=True)
        except BaseException as exc:
            lost = isinstance(exc, DBAPIError) and exc.connection_invalidated
            self._close_writer(invalidate=lost)  # a fresh connection for the next one
            if lost:
                raise _Disconnected() from exc  # nothing was written: write it again
            if isinstance(exc, OperationalError) or not isinstance(exc, Exception):
                raise
            logger.error("indexing %s failed: %s", ref.sop_instance_uid, type(exc).__name__)
            raise _ItemFailed({store: exc}) from None
        outcome = StoreOutcome.STORED if stored else StoreOutcome.ALREADY_PRESENT
        return {store: (outcome, known)}

    def _rows(
        self, connection: Connection, stores: list[_Pending]
    ) -> dict[_Pending, tuple[StoreOutcome, tuple[int, int] | None] | Exception]:
        """Every store's rows in the open transaction."""
        outcomes: dict[_Pending, tuple[StoreOutcome, tuple[int, int] | None] | Exception] = {}
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
        store: _Pending,
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

    def _parent_rows(self, connection: Connection, store: _Pending) -> tuple[tuple[int, int], bool]:
        """Patient, study and series rows of an instance (found or created)."""
        values = store.parsed.values
        ref = store.ref
        hot = self._hot_statements(connection)
        now = utcnow()
        patient_name = values.person_name("PatientName")
        patient_pk, _ = _find_or_insert(
            connection,
            hot.find_patient,
            hot.insert_patient,
            {
                "patient_id": values.text("PatientID", 64),
                "issuer_of_patient_id": values.text("IssuerOfPatientID", 64),
                "patient_name": patient_name,
                "patient_name_search": name_search_key(patient_name),
                "patient_birth_date": values.text("PatientBirthDate", 8),
                "patient_sex": values.text("PatientSex", 16),
                "created_at": now,
            },
        )
        study_pk, _ = _find_or_insert(
            connection,
            hot.find_study,
            hot.insert_study,
            {
                "study_instance_uid": ref.study_instance_uid,
                "patient_pk": patient_pk,
                "study_date": values.text("StudyDate", 8),
                "study_time": values.text("StudyTime", 16),
                "accession_number": values.text("AccessionNumber", 16),
                "study_id": values.text("StudyID", 16),
                "study_description": values.text("StudyDescription", 64),
                "referring_physician_name": values.person_name("ReferringPhysicianName"),
                "institution_name": values.text("InstitutionName", 64),
                "modalities_in_study": "",
                "sop_classes_in_study": "",
                "number_of_series": 0,
                "number_of_instances": 0,
                "created_at": now,
                "last_instance_at": now,
                "stable_at": None,
            },
        )
        # Lock the study row before the series (patient -> study -> series everywhere).
        hot.lock_study.rows(connection, {"study_pk": study_pk})
        series_pk, series_created = _find_or_insert(
            connection,
            hot.find_series,
            hot.insert_series,
            {
                "series_instance_uid": ref.series_instance_uid,
                "study_pk": study_pk,
                "modality": ref.modality,
                "series_number": values.integer("SeriesNumber"),
                "series_description": values.text("SeriesDescription", 64),
                "body_part_examined": values.text("BodyPartExamined", 16),
                "laterality": values.text("Laterality", 16),
                "series_date": values.text("SeriesDate", 8),
                "series_time": values.text("SeriesTime", 16),
                "performed_procedure_step_start_date": values.text(
                    "PerformedProcedureStepStartDate", 8
                ),
                "performed_procedure_step_start_time": values.text(
                    "PerformedProcedureStepStartTime", 16
                ),
                "number_of_instances": 0,
                "created_at": now,
            },
        )
        return (series_pk, study_pk), series_created

    def _instance_rows(
        self,
        connection: Connection,
        store: _Pending,
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
