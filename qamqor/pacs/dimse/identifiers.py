"""C-FIND / C-MOVE / C-GET identifiers: what a peer asks for, and the answers it gets back.

Pure functions (no network, no database): ``pydicom.Dataset`` in, criteria for
``qamqor.pacs.query`` or a response identifier out. Error messages never quote values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from qamqor.pacs.dimse.contexts import PATIENT_ROOT_MODELS
from qamqor.pacs.errors import InvalidQueryError
from qamqor.pacs.query import ATTRIBUTES, InstanceAvailability, Level

_DEPTH = {level: depth for depth, level in enumerate(Level)}
_NOT_CRITERIA = {"QueryRetrieveLevel", "SpecificCharacterSet"}
#: Keys answered without the index.
_CONSTANT_KEYS = {"InstanceAvailability": InstanceAvailability.ONLINE.value}
#: Unique key of each level, for retrieves.
UNIQUE_KEYS = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


@dataclass(frozen=True)
class Query:
    """A parsed identifier: the level, what to match and which keys to return."""

    level: Level
    criteria: dict[str, str]
    requested: list[BaseTag]

    def uids(self) -> str:
        """The UIDs asked for, for the audit trail (never names or IDs)."""
        parts = [
            self.criteria[k]
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
            if self.criteria.get(k)
        ]
        return " ".join([self.level.value, *parts])


def level_of(identifier: Dataset, sop_class_uid: str) -> Level:
    """The Query/Retrieve Level of ``identifier``, checked against the information model."""
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if not raw:
        raise InvalidQueryError("the identifier has no QueryRetrieveLevel")
    try:
        level = Level(raw)
    except ValueError:
        raise InvalidQueryError(
            "QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE"
        ) from None
    if level is Level.PATIENT and sop_class_uid not in PATIENT_ROOT_MODELS:
        raise InvalidQueryError("the Study Root information model has no PATIENT level")
    return level


def match_string(element: DataElement) -> str:
    """An element's value as a DICOM match string (``a\\b`` for several values)."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value)


def parse_query(identifier: Dataset, sop_class_uid: str) -> Query:
    """The level, criteria and return keys of a C-FIND identifier.

    A key of a lower level than the query's with no value is only returned (empty): some
    viewers send them. With a value it is an error, as it cannot be matched.
    """
    level = level_of(identifier, sop_class_uid)
    criteria: dict[str, str] = {}
    requested: list[BaseTag] = []
    for element in identifier:
        if element.tag.is_private or element.tag.group == 0x0002:
            continue
        keyword = element.keyword or keyword_for_tag(element.tag)
        if not keyword or keyword in _NOT_CRITERIA:
            continue
        requested.append(element.tag)
        if element.VR == "SQ":
            continue  # sequence matching is not supported: returned empty
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None:
            continue
        value = match_string(element)
        if _DEPTH[attribute.level] > _DEPTH[level]:
            if value.strip() not in ("", "*"):
                raise InvalidQueryError(
                    f"{keyword} is a {attribute.level.lower()}-level key; it cannot match "
                    f"at the {level.value} level"
                )
            continue
        criteria[keyword] = value
    return Query(level=level, criteria=criteria, requested=requested)


def parse_retrieve(identifier: Dataset, sop_class_uid: str) -> Query:
    """Level and unique keys of a C-MOVE / C-GET identifier."""
    level = level_of(identifier, sop_class_uid)
    criteria: dict[str, str] = {}
    for lvl, keyword in UNIQUE_KEYS.items():
        if _DEPTH[lvl] > _DEPTH[level]:
            break
        if keyword in identifier:
            value = match_string(identifier[keyword]).strip()
            if value:
                criteria[keyword] = value
    if UNIQUE_KEYS[level] not in criteria:
        raise InvalidQueryError(f"a {level.value}-level retrieve needs {UNIQUE_KEYS[level]}")
    for value in criteria.values():
        if "*" in value or "?" in value:
            raise InvalidQueryError("a retrieve takes unique keys, not wildcards")
    return Query(level=level, criteria=criteria, requested=[])


def _is_ascii(dataset: Dataset) -> bool:
    for element in dataset:
        value = element.value
        values: Iterable[object] = (
            value if isinstance(value, (MultiValue, list, tuple)) else [value]
        )
        for item in values:
            if item is not None and not str(item).isascii():
                return False
    return True


def build_response(
    query: Query, match: Dataset, *, retrieve_ae_title: str | None = None
) -> Dataset:
    """The response identifier: the requested keys only, with what ``match`` holds."""
    response = Dataset()
    response.QueryRetrieveLevel = query.level.value
    for tag in query.requested:
        keyword = keyword_for_tag(tag)
        if keyword in match:
            response[tag] = match[tag]
        elif keyword == "RetrieveAETitle" and retrieve_ae_title:
            response.RetrieveAETitle = retrieve_ae_title
        elif keyword in _CONSTANT_KEYS:
            setattr(response, keyword, _CONSTANT_KEYS[keyword])
        else:
            vr = dictionary_VR(tag)
            response.add_new(tag, vr, [] if vr == "SQ" else None)
    if not _is_ascii(response):
        response.SpecificCharacterSet = "ISO_IR 192"
    return response
