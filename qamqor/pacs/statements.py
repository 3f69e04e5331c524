"""The SQL of the store path, built and compiled once, and the rows it writes.

``HotStatements`` holds every statement a store runs, compiled for one dialect and run on the
driver's cursor (``DriverStatement``); the ``*_row`` functions give their parameters from a
parsed instance. The transactions around them are ``qamqor.pacs.writer``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, bindparam, case, exists, null, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from qamqor.pacs.models import Instance, Patient, Series, Study
from qamqor.pacs.parsing import IndexValues, ParsedInstance
from qamqor.pacs.stored import StoredRef


def name_search_key(name: str) -> str:
    """The form names are matched in: upper case, trailing empty components dropped."""
    return name.upper().rstrip("^ ")


class DriverStatement:
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


def find_or_insert(
    connection: Connection, find: DriverStatement, insert: DriverStatement, row: dict[str, Any]
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
    context (``DriverStatement`` has none)."""
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
_PATIENT = Patient.__table__


def _stability_changes() -> dict[str, Any]:
    """An image makes its study "not stable yet" again (its last instance is now, its stable
    time is cleared); any other instance (``rearm`` false) leaves both as they are, so that
    reports and AI results stored into a study do not announce it stable a second time."""
    rearm = bindparam("rearm", type_=Boolean())
    return {
        "last_instance_at": case(
            (rearm, bindparam("now", type_=_STUDY.c.last_instance_at.type)),
            else_=_STUDY.c.last_instance_at,
        ),
        "stable_at": case((rearm, null()), else_=_STUDY.c.stable_at),
    }


_COUNT_SERIES_INSTANCE = (
    update(Series)
    .where(_SERIES.c.id == bindparam("series_pk"))
    .values(number_of_instances=_SERIES.c.number_of_instances + 1)
)
_COUNT_STUDY_INSTANCE = (
    update(Study)
    .where(_STUDY.c.id == bindparam("study_pk"))
    .values(number_of_instances=_STUDY.c.number_of_instances + 1, **_stability_changes())
)
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
        **_stability_changes(),
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


@dataclass(frozen=True)
class HotStatements:
    """The statements of the store path, compiled once per dialect.

    Those of a new patient, study or series too: a chest film or a mammogram is often the
    only instance of its series, and built and compiled by SQLAlchemy at each use they cost
    several milliseconds more than the instance's own rows.
    """

    insert_instance: DriverStatement
    count_study: DriverStatement
    count_series: DriverStatement
    store_and_count: DriverStatement | None
    """The three in one statement, where the database can (PostgreSQL)."""
    find_patient: DriverStatement
    insert_patient: DriverStatement
    find_study: DriverStatement
    insert_study: DriverStatement
    lock_study: DriverStatement
    find_series: DriverStatement
    insert_series: DriverStatement
    study_lists: DriverStatement
    count_study_lists: DriverStatement
    count_study_lists_new_series: DriverStatement
    savepoint: DriverStatement
    """Before an instance's first rows of a series; SQLAlchemy's ``begin_nested`` and its
    commit cost 150 µs of CPU, the database 3 µs."""
    rollback_to_savepoint: DriverStatement
    release_savepoint: DriverStatement

    def undo_to_savepoint(self, connection: Connection) -> None:
        """Back to the savepoint and out of it (the next instance's is a new one)."""
        self.rollback_to_savepoint.rows(connection, {})
        self.release_savepoint.rows(connection, {})

    @classmethod
    def for_dialect(cls, dialect: Any) -> HotStatements:
        postgres = dialect.name == "postgresql"
        dialect_insert = postgresql.insert if postgres else sqlite.insert

        def compiled(statement: Any) -> DriverStatement:
            return DriverStatement(statement, dialect)

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


# Rows ---------------------------------------------------------------------------------------
def instance_row(
    parsed: ParsedInstance, ref: StoredRef, relative_path: str, source: str, *, derived: bool
) -> dict[str, Any]:
    """The values of an instance row that come from the file (the keys and times do not),
    and whether it makes its study "not stable yet" again (``rearm``: an image that is not
    derived from the study by Qamqor)."""
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
        "rearm": parsed.is_image and not derived,
    }


def patient_row(values: IndexValues, now: datetime) -> dict[str, Any]:
    patient_name = values.person_name("PatientName")
    return {
        "patient_id": values.text("PatientID", 64),
        "issuer_of_patient_id": values.text("IssuerOfPatientID", 64),
        "patient_name": patient_name,
        "patient_name_search": name_search_key(patient_name),
        "patient_birth_date": values.text("PatientBirthDate", 8),
        "patient_sex": values.text("PatientSex", 16),
        "created_at": now,
    }


def study_row(
    values: IndexValues, ref: StoredRef, patient_pk: int, now: datetime
) -> dict[str, Any]:
    return {
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
    }


def series_row(values: IndexValues, ref: StoredRef, study_pk: int, now: datetime) -> dict[str, Any]:
    return {
        "series_instance_uid": ref.series_instance_uid,
        "study_pk": study_pk,
        "modality": ref.modality,
        "series_number": values.integer("SeriesNumber"),
        "series_description": values.text("SeriesDescription", 64),
        "body_part_examined": values.text("BodyPartExamined", 16),
        "laterality": values.text("Laterality", 16),
        "series_date": values.text("SeriesDate", 8),
        "series_time": values.text("SeriesTime", 16),
        "performed_procedure_step_start_date": values.text("PerformedProcedureStepStartDate", 8),
        "performed_procedure_step_start_time": values.text("PerformedProcedureStepStartTime", 16),
        "number_of_instances": 0,
        "created_at": now,
    }
