"""The archive's service: store instances, find them, read them back.

No networking here: the DIMSE handlers, STOW-RS and ``qamqor import`` all call
``store_instance``; C-FIND and QIDO-RS call ``qamqor.pacs.query``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom import Dataset
from pydicom.valuerep import PersonName
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from qamqor.core.db import utcnow, write_connection
from qamqor.core.events import EventBus
from qamqor.pacs.errors import InstanceNotFoundError, StorageUnavailableError
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


def _text(dataset: Dataset, keyword: str, limit: int) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or getattr(value, "VM", 1) > 1:
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip()[:limit]


def _int_or_none(dataset: Dataset, keyword: str) -> int | None:
    value = dataset.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def name_search_key(name: str) -> str:
    """The form names are matched in: upper case, trailing empty components dropped."""
    return name.upper().rstrip("^ ")


def _person_name(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    if value is None:
        return ""
    if isinstance(value, PersonName):
        return str(value)[:324]
    return str(value)[:324]


def _insert(connection: Connection) -> Any:
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def _get_or_create(
    connection: Connection, model: Any, keys: dict[str, Any], values: dict[str, Any]
) -> tuple[int, bool]:
    """The primary key of the row matching ``keys``, inserting it if absent.

    ``INSERT .. ON CONFLICT DO NOTHING`` makes this safe against a concurrent insert of the same
    row on PostgreSQL; on SQLite the write lock is held already.
    """
    where = [getattr(model, k) == v for k, v in keys.items()]
    existing = connection.scalar(select(model.id).where(*where))
    if existing is not None:
        return existing, False
    statement = (
        _insert(connection)(model)
        .values(**keys, **values)
        .on_conflict_do_nothing(index_elements=list(keys))
        .returning(model.id)
    )
    inserted = connection.scalar(statement)
    if inserted is not None:
        return inserted, True
    return connection.scalar(select(model.id).where(*where)), False  # type: ignore[return-value]


# The hot path's statements, built once (SQLAlchemy then reuses their compiled form).
_INSERT_INSTANCE = insert(Instance)
_COUNT_SERIES_INSTANCE = (
    update(Series)
    .where(Series.__table__.c.id == bindparam("series_pk"))
    .values(number_of_instances=Series.__table__.c.number_of_instances + 1)
)
_COUNT_STUDY_INSTANCE = (
    update(Study)
    .where(Study.__table__.c.id == bindparam("study_pk"))
    .values(
        number_of_instances=Study.__table__.c.number_of_instances + 1,
        last_instance_at=bindparam("now"),
        stable_at=None,
    )
)


class ArchiveService:
    """Stores and reads instances. One per process; thread-safe."""

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

    # Storing ------------------------------------------------------------------------------
    def store_instance(self, parsed: ParsedInstance, *, source: str) -> StoreResult:
        """Store a checked instance: file durable and index row committed, or an error.

        Storing a SOP Instance UID that is already archived changes nothing and reports
        ``ALREADY_PRESENT``.
        """
        ds = parsed.dataset
        ref = StoredRef(
            study_instance_uid=str(ds.StudyInstanceUID).strip(),
            series_instance_uid=str(ds.SeriesInstanceUID).strip(),
            sop_instance_uid=str(ds.SOPInstanceUID).strip(),
            sop_class_uid=str(ds.SOPClassUID).strip(),
            modality=_text(ds, "Modality", 16),
        )
        # No look-up first: a second copy is rare, and the unique index catches it for the
        # price of one discarded file, where a look-up would cost every store a query.
        relative_path = self.storage.relative_path_for(ref.sop_instance_uid)
        try:
            staged = self.storage.stage(relative_path, parsed.data)
        except OSError as exc:
            logger.error("staging %s failed: %s", ref.sop_instance_uid, type(exc).__name__)
            raise StorageUnavailableError("the archive's storage cannot be written") from None

        try:
            outcome = self._index(parsed, ref, staged, source)
        except Exception:
            self.storage.discard(staged)
            raise
        if outcome is StoreOutcome.ALREADY_PRESENT:
            self.storage.discard(staged)
        else:
            self.storage.publish(staged)
            self.events.publish(INSTANCE_STORED, instance=ref)
        return StoreResult(outcome, ref)

    def _index(
        self, parsed: ParsedInstance, ref: StoredRef, staged: StagedFile, source: str
    ) -> StoreOutcome:
        try:
            with write_connection(self.engine) as connection:
                known = self._insert_rows(connection, parsed, ref, staged, source)
            self._remember(ref, known)
        except IntegrityError:
            # The SOP Instance UID is archived already (or arrived at the same moment).
            with self.engine.connect() as connection:
                if connection.scalar(
                    select(Instance.id).where(Instance.sop_instance_uid == ref.sop_instance_uid)
                ):
                    return StoreOutcome.ALREADY_PRESENT
            raise
        except OperationalError as exc:
            logger.error("indexing %s failed: %s", ref.sop_instance_uid, type(exc).__name__)
            raise StorageUnavailableError("the archive's database cannot be written") from None
        return StoreOutcome.STORED

    def _insert_rows(
        self,
        connection: Connection,
        parsed: ParsedInstance,
        ref: StoredRef,
        staged: StagedFile,
        source: str,
    ) -> tuple[int, int]:
        ds = parsed.dataset
        now = utcnow()
        known = self._known_series.get(ref.series_instance_uid)
        series_created = False
        if known is None:
            patient_pk, _ = _get_or_create(
                connection,
                Patient,
                {
                    "patient_id": _text(ds, "PatientID", 64),
                    "issuer_of_patient_id": _text(ds, "IssuerOfPatientID", 64),
                },
                {
                    "patient_name": _person_name(ds, "PatientName"),
                    "patient_name_search": name_search_key(_person_name(ds, "PatientName")),
                    "patient_birth_date": _text(ds, "PatientBirthDate", 8),
                    "patient_sex": _text(ds, "PatientSex", 16),
                    "created_at": now,
                },
            )
            study_pk, _ = _get_or_create(
                connection,
                Study,
                {"study_instance_uid": ref.study_instance_uid},
                {
                    "patient_pk": patient_pk,
                    "study_date": _text(ds, "StudyDate", 8),
                    "study_time": _text(ds, "StudyTime", 16),
                    "accession_number": _text(ds, "AccessionNumber", 16),
                    "study_id": _text(ds, "StudyID", 16),
                    "study_description": _text(ds, "StudyDescription", 64),
                    "referring_physician_name": _person_name(ds, "ReferringPhysicianName"),
                    "institution_name": _text(ds, "InstitutionName", 64),
                    "created_at": now,
                    "last_instance_at": now,
                },
            )
            # Lock the study row before the series (patient -> study -> series everywhere).
            connection.execute(select(Study.id).where(Study.id == study_pk).with_for_update())
            series_pk, series_created = _get_or_create(
                connection,
                Series,
                {"series_instance_uid": ref.series_instance_uid},
                {
                    "study_pk": study_pk,
                    "modality": ref.modality,
                    "series_number": _int_or_none(ds, "SeriesNumber"),
                    "series_description": _text(ds, "SeriesDescription", 64),
                    "body_part_examined": _text(ds, "BodyPartExamined", 16),
                    "laterality": _text(ds, "Laterality", 16),
                    "series_date": _text(ds, "SeriesDate", 8),
                    "series_time": _text(ds, "SeriesTime", 16),
                    "performed_procedure_step_start_date": _text(
                        ds, "PerformedProcedureStepStartDate", 8
                    ),
                    "performed_procedure_step_start_time": _text(
                        ds, "PerformedProcedureStepStartTime", 16
                    ),
                    "created_at": now,
                },
            )
            known = (series_pk, study_pk)
        series_pk, study_pk = known

        # Row locks are taken study first, then series, in every path: no deadlocks.
        study_changes: dict[str, Any] = {
            "number_of_instances": Study.number_of_instances + 1,
            "last_instance_at": now,
            "stable_at": None,
        }
        if series_created:
            study_changes["number_of_series"] = Study.number_of_series + 1
        if series_created or (study_pk, ref.sop_class_uid) not in self._known_sop_classes:
            # Rare: the study's lists change. The row is locked by this transaction already
            # on PostgreSQL (SELECT .. FOR UPDATE above, or the UPDATE below when cached).
            modalities_text, sop_classes_text = connection.execute(
                select(Study.modalities_in_study, Study.sop_classes_in_study)
                .where(Study.id == study_pk)
                .with_for_update()
            ).one()
            modalities = set(filter(None, modalities_text.split("\\")))
            modalities.add(ref.modality)
            sop_classes = set(filter(None, sop_classes_text.split("\\")))
            sop_classes.add(ref.sop_class_uid)
            study_changes["modalities_in_study"] = "\\".join(sorted(filter(None, modalities)))[:128]
            study_changes["sop_classes_in_study"] = "\\".join(sorted(sop_classes))[:1024]
        if len(study_changes) == 3:
            connection.execute(_COUNT_STUDY_INSTANCE, {"study_pk": study_pk, "now": now})
        else:
            connection.execute(update(Study).where(Study.id == study_pk).values(**study_changes))
        connection.execute(
            _INSERT_INSTANCE,
            dict(
                sop_instance_uid=ref.sop_instance_uid,
                series_pk=series_pk,
                sop_class_uid=ref.sop_class_uid,
                instance_number=_int_or_none(ds, "InstanceNumber"),
                transfer_syntax_uid=parsed.transfer_syntax_uid,
                rows=_int_or_none(ds, "Rows"),
                columns=_int_or_none(ds, "Columns"),
                number_of_frames=_int_or_none(ds, "NumberOfFrames"),
                bits_allocated=_int_or_none(ds, "BitsAllocated"),
                samples_per_pixel=_int_or_none(ds, "SamplesPerPixel"),
                photometric_interpretation=_text(ds, "PhotometricInterpretation", 16),
                image_laterality=_text(ds, "ImageLaterality", 16),
                view_position=_text(ds, "ViewPosition", 16),
                content_date=_text(ds, "ContentDate", 8),
                content_time=_text(ds, "ContentTime", 16),
                file_path=staged.relative_path,
                file_size=len(parsed.data),
                source=source[:64],
                received_at=now,
            ),
        )
        connection.execute(_COUNT_SERIES_INSTANCE, {"series_pk": series_pk})
        return known

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
