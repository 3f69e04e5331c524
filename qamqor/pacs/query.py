"""Searching the index: the matching rules of PS3.4 C.2.2.2, shared by C-FIND and QIDO-RS.

Criteria come as ``{keyword: DICOM match string}``:

* empty string: universal match (the attribute is only returned);
* ``*`` and ``?``: wildcards (names match case-insensitively);
* ``a-b``, ``a-``, ``-b``: range matching for dates and times;
* ``uid1\\uid2``: list of UID matching.

Results are ``pydicom.Dataset`` objects holding every attribute of the level and the levels
above it; callers keep what they were asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from qamqor.core.numbers import DB_INT_MAX, DB_INT_MIN, whole_number
from qamqor.pacs.errors import InvalidQueryError
from qamqor.pacs.models import Instance, Patient, Series, Study
from qamqor.pacs.service import name_search_key


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class InstanceAvailability(StrEnum):
    """Instance Availability (0008,0056), PS3.4 C.4.1.1.3.2: every instance this archive
    holds is on line (it keeps no near-line or off-line tier)."""

    ONLINE = "ONLINE"
    NEARLINE = "NEARLINE"
    OFFLINE = "OFFLINE"
    UNAVAILABLE = "UNAVAILABLE"


class Kind(StrEnum):
    TEXT = "text"
    NAME = "name"
    DATE = "date"
    TIME = "time"
    UID = "uid"
    INT = "int"
    MODALITIES = "modalities"
    LIST = "list"  # a backslash-joined column (e.g. SOP classes in study)


@dataclass(frozen=True)
class Attribute:
    keyword: str
    level: Level
    column: Any
    kind: Kind
    match_column: Any = None
    """Column used for matching if not ``column`` (names: the upper-case copy)."""
    byte_ordered: bool = False
    """The match column sorts byte by byte on every database (see ``pacs.models``): a
    prefix match (``DOE*``) is then an index range."""


_A = Attribute
ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in [
        _A(
            "PatientName",
            Level.PATIENT,
            Patient.patient_name,
            Kind.NAME,
            Patient.patient_name_search,
            byte_ordered=True,
        ),
        _A("PatientID", Level.PATIENT, Patient.patient_id, Kind.TEXT, byte_ordered=True),
        _A("IssuerOfPatientID", Level.PATIENT, Patient.issuer_of_patient_id, Kind.TEXT),
        _A("PatientBirthDate", Level.PATIENT, Patient.patient_birth_date, Kind.DATE),
        _A("PatientSex", Level.PATIENT, Patient.patient_sex, Kind.TEXT),
        _A("StudyInstanceUID", Level.STUDY, Study.study_instance_uid, Kind.UID),
        _A("StudyDate", Level.STUDY, Study.study_date, Kind.DATE),
        _A("StudyTime", Level.STUDY, Study.study_time, Kind.TIME),
        _A("AccessionNumber", Level.STUDY, Study.accession_number, Kind.TEXT, byte_ordered=True),
        _A("StudyID", Level.STUDY, Study.study_id, Kind.TEXT),
        _A("StudyDescription", Level.STUDY, Study.study_description, Kind.TEXT),
        _A(
            "ReferringPhysicianName",
            Level.STUDY,
            Study.referring_physician_name,
            Kind.NAME,
            func.upper(Study.referring_physician_name),
        ),
        _A("InstitutionName", Level.STUDY, Study.institution_name, Kind.TEXT),
        _A("ModalitiesInStudy", Level.STUDY, Study.modalities_in_study, Kind.MODALITIES),
        _A("SOPClassesInStudy", Level.STUDY, Study.sop_classes_in_study, Kind.LIST),
        _A("NumberOfStudyRelatedSeries", Level.STUDY, Study.number_of_series, Kind.INT),
        _A("NumberOfStudyRelatedInstances", Level.STUDY, Study.number_of_instances, Kind.INT),
        _A("SeriesInstanceUID", Level.SERIES, Series.series_instance_uid, Kind.UID),
        _A("Modality", Level.SERIES, Series.modality, Kind.TEXT),
        _A("SeriesNumber", Level.SERIES, Series.series_number, Kind.INT),
        _A("SeriesDescription", Level.SERIES, Series.series_description, Kind.TEXT),
        _A("BodyPartExamined", Level.SERIES, Series.body_part_examined, Kind.TEXT),
        _A("Laterality", Level.SERIES, Series.laterality, Kind.TEXT),
        _A("SeriesDate", Level.SERIES, Series.series_date, Kind.DATE),
        _A("SeriesTime", Level.SERIES, Series.series_time, Kind.TIME),
        _A(
            "PerformedProcedureStepStartDate",
            Level.SERIES,
            Series.performed_procedure_step_start_date,
            Kind.DATE,
        ),
        _A(
            "PerformedProcedureStepStartTime",
            Level.SERIES,
            Series.performed_procedure_step_start_time,
            Kind.TIME,
        ),
        _A("NumberOfSeriesRelatedInstances", Level.SERIES, Series.number_of_instances, Kind.INT),
        _A("SOPInstanceUID", Level.IMAGE, Instance.sop_instance_uid, Kind.UID),
        _A("SOPClassUID", Level.IMAGE, Instance.sop_class_uid, Kind.UID),
        _A("InstanceNumber", Level.IMAGE, Instance.instance_number, Kind.INT),
        _A("Rows", Level.IMAGE, Instance.rows, Kind.INT),
        _A("Columns", Level.IMAGE, Instance.columns, Kind.INT),
        _A("NumberOfFrames", Level.IMAGE, Instance.number_of_frames, Kind.INT),
        _A("BitsAllocated", Level.IMAGE, Instance.bits_allocated, Kind.INT),
        _A("SamplesPerPixel", Level.IMAGE, Instance.samples_per_pixel, Kind.INT),
        _A(
            "PhotometricInterpretation", Level.IMAGE, Instance.photometric_interpretation, Kind.TEXT
        ),
        _A("ImageLaterality", Level.IMAGE, Instance.image_laterality, Kind.TEXT),
        _A("ViewPosition", Level.IMAGE, Instance.view_position, Kind.TEXT),
        _A("ContentDate", Level.IMAGE, Instance.content_date, Kind.DATE),
        _A("ContentTime", Level.IMAGE, Instance.content_time, Kind.TIME),
        _A("AvailableTransferSyntaxUID", Level.IMAGE, Instance.transfer_syntax_uid, Kind.UID),
    ]
}

_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]
_TABLES: dict[Level, Any] = {
    Level.PATIENT: Patient,
    Level.STUDY: Study,
    Level.SERIES: Series,
    Level.IMAGE: Instance,
}


def attributes_for(level: Level) -> list[Attribute]:
    """Attributes returned at ``level``: its own and those of every level above it."""
    depth = _ORDER.index(level)
    return [a for a in ATTRIBUTES.values() if _ORDER.index(a.level) <= depth]


def keyword_of(key: str) -> str:
    """A keyword from a keyword or a tag (``00100010``, ``(0010,0020)``)."""
    key = key.strip()
    if key in ATTRIBUTES or tag_for_keyword(key) is not None:
        return key
    digits = key.strip("()").replace(",", "")
    if len(digits) == 8:
        try:
            keyword = keyword_for_tag(int(digits, 16))
        except ValueError:
            keyword = ""
        if keyword:
            return keyword
    raise InvalidQueryError(f"unknown attribute {key!r}")


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _prefix_range(column: Any, value: str) -> Any:
    """``DOE*`` as ``column >= 'DOE' AND column < 'DOF'`` (None if not a plain prefix)."""
    prefix = value[:-1]
    if not value.endswith("*") or not prefix or "*" in prefix or "?" in prefix:
        return None
    if ord(prefix[-1]) >= 0x10FFFF:
        return None
    return and_(column >= prefix, column < prefix[:-1] + chr(ord(prefix[-1]) + 1))


def _condition(attribute: Attribute, value: str) -> Any:
    value = value.strip()
    if value == "" or value == "*":
        return None
    column = attribute.match_column if attribute.match_column is not None else attribute.column
    kind = attribute.kind
    if kind is Kind.NAME:
        value = name_search_key(value)
        if attribute.byte_ordered and (prefix := _prefix_range(column, value)) is not None:
            return prefix
        if "*" in value or "?" in value:
            return column.like(_like_pattern(value), escape="\\")
        return column == value
    if kind is Kind.UID:
        uids = [u.strip() for u in value.replace(",", "\\").split("\\") if u.strip()]
        return column.in_(uids) if len(uids) > 1 else column == uids[0]
    if kind in (Kind.DATE, Kind.TIME):
        return _range_condition(column, value, kind)
    if kind is Kind.INT:
        try:
            number = whole_number(
                value.strip(), name=attribute.keyword, minimum=DB_INT_MIN, maximum=DB_INT_MAX
            )
        except ValueError:
            raise InvalidQueryError(
                f"{attribute.keyword} must be a number from {DB_INT_MIN} to {DB_INT_MAX} "
                "in the digits 0-9"
            ) from None
        return column == number
    if kind is Kind.MODALITIES:
        modalities = [m.strip() for m in value.replace(",", "\\").split("\\") if m.strip()]
        return exists().where(Series.study_pk == Study.id, Series.modality.in_(modalities))
    if kind is Kind.LIST:
        return or_(
            column == value,
            column.like(f"{_like_pattern(value)}\\\\%", escape="\\"),
            column.like(f"%\\\\{_like_pattern(value)}", escape="\\"),
            column.like(f"%\\\\{_like_pattern(value)}\\\\%", escape="\\"),
        )
    if attribute.byte_ordered and (prefix := _prefix_range(column, value)) is not None:
        return prefix
    if "*" in value or "?" in value:
        return column.like(_like_pattern(value), escape="\\")
    if "\\" in value:
        return column.in_(value.split("\\"))
    return column == value


def _normalise_date(value: str, kind: Kind) -> str:
    value = value.strip()
    if kind is Kind.DATE:
        value = value.replace("-", "").replace(".", "")
        if value and (len(value) != 8 or not value.isdigit()):
            raise InvalidQueryError(f"dates are YYYYMMDD, not {value!r}")
    else:
        value = value.replace(":", "")
        if value and not value.replace(".", "").isdigit():
            raise InvalidQueryError(f"times are HHMMSS, not {value!r}")
    return value


def _range_condition(column: Any, value: str, kind: Kind) -> Any:
    if "-" not in value or (kind is Kind.DATE and len(value) == 10 and value.count("-") == 2):
        return column == _normalise_date(value, kind)
    low, high = value.split("-", 1)
    low, high = _normalise_date(low, kind), _normalise_date(high, kind)
    conditions = [column != ""]
    if low:
        conditions.append(column >= low)
    if high:
        # A time range's upper bound "1200" must include "120059.99".
        conditions.append(column <= high if kind is Kind.DATE else column <= high + "\uffff")
    return and_(*conditions)


def build_query(level: Level, criteria: dict[str, str]) -> Select[Any]:
    """The SELECT for ``level`` filtered by ``criteria`` (unknown keys: ``InvalidQueryError``)."""
    table = _TABLES[level]
    depth = _ORDER.index(level)
    columns = [a.column.label(a.keyword) for a in attributes_for(level)]
    query = select(*columns)
    if level is Level.PATIENT:
        study_count = (
            select(func.count(Study.id)).where(Study.patient_pk == Patient.id).scalar_subquery()
        )
        query = query.add_columns(study_count.label("NumberOfPatientRelatedStudies"))
    query = query.select_from(table)
    if depth >= 3:
        query = query.join(Series, Instance.series_pk == Series.id)
    if depth >= 2:
        query = query.join(Study, Series.study_pk == Study.id)
    if depth >= 1:
        query = query.join(Patient, Study.patient_pk == Patient.id)

    for key, value in criteria.items():
        keyword = keyword_of(key)
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None:
            continue  # not indexed: only returned if present (see ``search``)
        if _ORDER.index(attribute.level) > depth:
            raise InvalidQueryError(
                f"{keyword} is a {attribute.level.lower()}-level attribute; it cannot filter "
                f"a {level.lower()}-level query"
            )
        condition = _condition(attribute, value)
        if condition is not None:
            query = query.where(condition)
    return query


def _default_order(level: Level) -> Sequence[Any]:
    if level is Level.PATIENT:
        return [Patient.patient_id, Patient.id]
    if level is Level.STUDY:
        return [Study.study_date.desc(), Study.study_time.desc(), Study.id.desc()]
    if level is Level.SERIES:
        return [Series.series_number, Series.id]
    return [Instance.instance_number, Instance.id]


def search_rows(
    session: Session,
    *,
    level: Level,
    criteria: dict[str, str],
    limit: int | None = None,
    offset: int = 0,
    order: Sequence[Any] = (),
) -> list[dict[str, Any]]:
    """Every match as ``{keyword: value}`` with all attributes of ``level`` and above.

    Values are as indexed: text (``""`` when absent, lists joined by backslashes) or numbers.
    ``order``: sort keys that go before the level's default order (e.g. another capability's
    correlated subquery on the study, such as its AI priority).
    """
    query = build_query(level, criteria).order_by(*order, *_default_order(level)).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return [dict(row._mapping) for row in session.execute(query)]


def search(
    session: Session,
    *,
    level: Level,
    criteria: dict[str, str],
    limit: int | None = None,
    offset: int = 0,
    order: Sequence[Any] = (),
) -> list[Dataset]:
    """Datasets for every match, each with all attributes of ``level`` and above."""
    rows = search_rows(
        session, level=level, criteria=criteria, limit=limit, offset=offset, order=order
    )
    return [row_to_dataset(row) for row in rows]


def row_to_dataset(mapping: Any) -> Dataset:
    dataset = Dataset()
    for keyword, value in mapping.items():
        if value is None:
            setattr(dataset, keyword, None)
            continue
        tag = tag_for_keyword(keyword)
        vr = dictionary_VR(tag) if tag is not None else "UN"
        if vr == "IS":
            value = str(value)
        elif vr in ("US", "UL") and value == "":
            value = None
        elif keyword in ("ModalitiesInStudy", "SOPClassesInStudy") and value:
            value = value.split("\\")
        setattr(dataset, keyword, value if value != "" else None)
    return dataset
