"""The archive's index, read by other parts: typed rows and joinable selectables.

Other parts (AI, reading) use these instead of the archive's tables. The query functions return
frozen dataclasses; where a caller must sort, filter or paginate in its own SQL (the reading
worklist), :func:`worklist_studies` gives a subquery to join and :func:`study_has_modality` a
condition on it, so the caller never names the archive's tables.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Subquery, exists, select
from sqlalchemy.orm import Session

from qamqor.pacs.models import Instance, Patient, Series, Study

__all__ = [
    "InstanceRow",
    "PatientStudy",
    "StudySummary",
    "facilities",
    "instance_sizes",
    "patient_studies",
    "study_has_modality",
    "study_instances",
    "study_of",
    "study_uid_column",
    "worklist_studies",
]


@dataclass(frozen=True)
class PatientStudy:
    """A study with its patient: what a worklist or a viewer shows about it."""

    pk: int
    """The study's row id (stable: other parts may key their rows on it)."""
    study_instance_uid: str
    patient_pk: int
    patient_name: str
    patient_id: str
    patient_sex: str
    patient_birth_date: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    institution_name: str
    modalities_in_study: str
    """Backslash-separated, as in DICOM (``MG\\SR``)."""
    created_at: datetime
    """When the study reached the archive."""


@dataclass(frozen=True)
class StudySummary:
    """A study as a list of a patient's studies shows it."""

    study_instance_uid: str
    study_date: str
    study_description: str
    modalities_in_study: str


@dataclass(frozen=True)
class InstanceRow:
    """One instance of a study, with its series (from the index: no file is read)."""

    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    image_laterality: str
    view_position: str
    series_pk: int
    series_instance_uid: str
    series_number: int | None
    modality: str
    series_description: str
    series_laterality: str


def study_of(session: Session, study_instance_uid: str) -> PatientStudy | None:
    """The study and its patient (None when the archive has no such study)."""
    found = session.execute(
        select(Study, Patient)
        .join(Patient, Patient.id == Study.patient_pk)
        .where(Study.study_instance_uid == study_instance_uid)
    ).first()
    if found is None:
        return None
    study, patient = found
    return PatientStudy(
        pk=study.id,
        study_instance_uid=study.study_instance_uid,
        patient_pk=patient.id,
        patient_name=patient.patient_name,
        patient_id=patient.patient_id,
        patient_sex=patient.patient_sex,
        patient_birth_date=patient.patient_birth_date,
        study_date=study.study_date,
        study_time=study.study_time,
        accession_number=study.accession_number,
        study_description=study.study_description,
        institution_name=study.institution_name,
        modalities_in_study=study.modalities_in_study,
        created_at=study.created_at,
    )


def study_instances(
    session: Session,
    study_instance_uid: str,
    *,
    sop_classes: Collection[str] | None = None,
    modalities: Collection[str] | None = None,
) -> list[InstanceRow]:
    """The study's instances in series order (series number, then instance number), only of
    ``sop_classes`` and in series of ``modalities`` when given."""
    query = (
        select(Instance, Series)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .where(Study.study_instance_uid == study_instance_uid)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    if sop_classes is not None:
        query = query.where(Instance.sop_class_uid.in_(sorted(sop_classes)))
    if modalities is not None:
        query = query.where(Series.modality.in_(sorted(modalities)))
    return [
        InstanceRow(
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            instance_number=instance.instance_number,
            rows=instance.rows,
            columns=instance.columns,
            number_of_frames=instance.number_of_frames,
            image_laterality=instance.image_laterality,
            view_position=instance.view_position,
            series_pk=series.id,
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            modality=series.modality,
            series_description=series.series_description,
            series_laterality=series.laterality,
        )
        for instance, series in session.execute(query)
    ]


def patient_studies(
    session: Session, patient_pk: int, *, excluding: str = "", limit: int = 20
) -> list[StudySummary]:
    """The patient's studies, newest first (``excluding`` one of them)."""
    query = (
        select(
            Study.study_instance_uid,
            Study.study_date,
            Study.study_description,
            Study.modalities_in_study,
        )
        .where(Study.patient_pk == patient_pk)
        .order_by(Study.study_date.desc(), Study.id.desc())
        .limit(limit)
    )
    if excluding:
        query = query.where(Study.study_instance_uid != excluding)
    return [StudySummary(*row) for row in session.execute(query)]


def facilities(session: Session, *, limit: int = 500) -> list[str]:
    """The facilities (Institution Name) that have sent studies, in alphabetical order."""
    return list(
        session.scalars(
            select(Study.institution_name)
            .where(Study.institution_name != "")
            .distinct()
            .order_by(Study.institution_name)
            .limit(limit)
        )
    )


def image_modalities(session: Session) -> list[str]:
    """The modalities of the archive's images (series holding at least one image, so not SR,
    KO or presentation states), in alphabetical order: what a modality filter offers."""
    has_image = exists(
        select(Instance.id).where(Instance.series_pk == Series.id, Instance.rows.is_not(None))
    )
    return list(
        session.scalars(
            select(Series.modality)
            .where(Series.modality != "", has_image)
            .distinct()
            .order_by(Series.modality)
        )
    )


def worklist_studies() -> Subquery:
    """Studies with their patients, to join and filter in the caller's query.

    Columns: ``pk`` (the study's row id), ``study_instance_uid``, ``patient_name``,
    ``patient_name_search`` (see :func:`~qamqor.pacs.service.name_search_key`),
    ``patient_id``, ``patient_sex``, ``patient_birth_date``, ``study_date``, ``study_time``,
    ``accession_number``, ``study_description``, ``institution_name``, ``modalities_in_study``,
    ``created_at`` (when the study reached the archive). The databases inline it: the indexes
    of the archive's tables serve the caller's filters.
    """
    return (
        select(
            Study.id.label("pk"),
            Study.study_instance_uid,
            Patient.patient_name,
            Patient.patient_name_search,
            Patient.patient_id,
            Patient.patient_sex,
            Patient.patient_birth_date,
            Study.study_date,
            Study.study_time,
            Study.accession_number,
            Study.study_description,
            Study.institution_name,
            Study.modalities_in_study,
            Study.created_at,
        )
        .join(Patient, Patient.id == Study.patient_pk)
        .subquery("pacs_worklist_studies")
    )


def study_has_modality(study_pk: ColumnElement[int] | Any, modality: str) -> ColumnElement[bool]:
    """SQL condition: the study of row id ``study_pk`` (a column of the caller's query, e.g.
    ``worklist_studies().c.pk``) has a series of ``modality``."""
    return exists(select(Series.id).where(Series.study_pk == study_pk, Series.modality == modality))


def instance_sizes() -> Subquery:
    """Instances' image sizes to join on ``sop_instance_uid``: columns ``sop_instance_uid``,
    ``rows``, ``columns`` (None for non-images)."""
    return select(Instance.sop_instance_uid, Instance.rows, Instance.columns).subquery(
        "pacs_instance_sizes"
    )


def study_uid_column() -> ColumnElement[str]:
    """The Study Instance UID column of the archive's studies list query, for the sort keys
    a :class:`~qamqor.pacs.extensions.StudyListExtension` correlates to it."""
    return Study.study_instance_uid.expression
