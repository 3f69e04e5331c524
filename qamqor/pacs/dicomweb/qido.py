"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

Matching is ``qamqor.pacs.query`` (the same rules as C-FIND). Each result carries the default
return attributes of PS3.18 Table 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5 (instance)
for its level, those of the levels above when the search is not scoped to them, the match
keys, and whatever ``includefield`` asks for that the index holds.
"""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydicom.datadict import dictionary_VR, tag_for_keyword

from qamqor.core.audit import AuditAction
from qamqor.core.numbers import DB_INT_MAX, whole_number
from qamqor.http.deps import DbSession
from qamqor.pacs.dicomweb.common import (
    ImagingUser,
    audit_read,
    base_url,
    dicom_json,
    fail,
    instance_url,
    series_url,
    study_url,
    warning_header,
)
from qamqor.pacs.errors import InvalidQueryError
from qamqor.pacs.query import (
    ATTRIBUTES,
    InstanceAvailability,
    Level,
    keyword_of,
    search_rows,
)

router = APIRouter()

#: The most results one request returns; more are fetched with ``offset`` (a Warning says so).
MAX_RESULTS = 5000

STUDY_DEFAULTS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = (
    "StudyInstanceUID",
    "Modality",
    "SeriesDescription",
    "RetrieveURL",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)
INSTANCE_DEFAULTS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "RetrieveURL",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
_OBJECT_TYPES = {Level.STUDY: "study", Level.SERIES: "series", Level.IMAGE: "instance"}
_UID_KEYWORDS = {
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}


def _non_negative(name: str, raw: str) -> int:
    """0 to ``DB_INT_MAX`` in ASCII digits (``int()`` would take "٣" and sizes the database
    cannot hold)."""
    try:
        return whole_number(raw, name=name, minimum=0, maximum=DB_INT_MAX)
    except ValueError as exc:
        fail(400, str(exc))


class _Query:
    """The parsed query string of one QIDO-RS request."""

    def __init__(self, request: Request, scope: dict[str, str]) -> None:
        self.criteria: dict[str, str] = {}
        self.include: set[str] = set()
        self.include_all = False
        self.limit: int | None = None
        self.offset = 0
        self.warnings: list[str] = []
        for key, value in request.query_params.multi_items():
            if key == "limit":
                self.limit = _non_negative("limit", value)
            elif key == "offset":
                self.offset = _non_negative("offset", value)
            elif key == "fuzzymatching":
                if value.lower() == "true":
                    self.warnings.append("fuzzymatching is not supported; exact matching was used")
            elif key == "includefield":
                self._include(value)
            else:
                keyword = self._keyword(key)
                if keyword not in ATTRIBUTES:
                    self.warnings.append(f"{keyword} is not supported for matching; ignored")
                    continue
                previous = self.criteria.get(keyword)
                # A repeated key is a list of values (OR), as in DICOM's backslash lists.
                self.criteria[keyword] = value if previous is None else f"{previous}\\{value}"
        self.criteria.update(scope)

    @staticmethod
    def _keyword(key: str) -> str:
        try:
            return keyword_of(key)
        except InvalidQueryError as exc:
            fail(400, exc.message)

    def _include(self, value: str) -> None:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item.lower() == "all":
                self.include_all = True
                continue
            self.include.add(self._keyword(item))


_MULTI_VALUED = {"ModalitiesInStudy", "SOPClassesInStudy"}
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


@cache
def _tag_and_vr(keyword: str) -> tuple[str, str]:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}", dictionary_VR(tag)


def json_value(keyword: str, value: object) -> dict[str, object]:
    """One attribute of an index row in the DICOM JSON model (PS3.18 F.2), without pydicom.

    Building pydicom datasets for each result cost ~1.5 ms per study; this is ~20 us.
    """
    _, vr = _tag_and_vr(keyword)
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        groups = str(value).split("=")
        name = {key: text for key, text in zip(_PN_GROUPS, groups, strict=False) if text}
        return {"vr": vr, "Value": [name]} if name else {"vr": vr}
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return {"vr": vr, "Value": [int(value)]}  # type: ignore[call-overload]
    if keyword in _MULTI_VALUED:
        return {"vr": vr, "Value": str(value).split("\\")}
    return {"vr": vr, "Value": [value]}


def _result(
    match: dict[str, object], keywords: list[str], level: Level, base: str
) -> dict[str, object]:
    out: dict[str, object] = {}
    for keyword in keywords:
        tag, vr = _tag_and_vr(keyword)
        if keyword == "InstanceAvailability":
            out[tag] = {"vr": vr, "Value": [InstanceAvailability.ONLINE.value]}
        elif keyword == "RetrieveURL":
            out[tag] = {"vr": vr, "Value": [_retrieve_url(match, level, base)]}
        elif keyword in match:
            out[tag] = json_value(keyword, match[keyword])
    return out


def _retrieve_url(match: dict[str, object], level: Level, base: str) -> str:
    study = str(match.get("StudyInstanceUID", ""))
    if level is Level.STUDY:
        return study_url(base, study)
    series = str(match.get("SeriesInstanceUID", ""))
    if level is Level.SERIES:
        return series_url(base, study, series)
    return instance_url(base, study, series, str(match.get("SOPInstanceUID", "")))


def _search(
    request: Request,
    session: DbSession,
    user: ImagingUser,
    *,
    level: Level,
    defaults: tuple[str, ...],
    scope: dict[str, str],
) -> JSONResponse:
    query = _Query(request, scope)
    limit = MAX_RESULTS if query.limit is None else min(query.limit, MAX_RESULTS)
    try:
        matches = search_rows(
            session, level=level, criteria=query.criteria, limit=limit + 1, offset=query.offset
        )
    except InvalidQueryError as exc:
        fail(400, exc.message)
    if len(matches) > limit:
        matches = matches[:limit]
        if query.limit is None or query.limit > MAX_RESULTS:
            query.warnings.append(
                f"there are more than {limit} matches; "
                f"ask for the rest with offset={query.offset + limit}"
            )
    keywords = set(defaults) | set(query.criteria) | query.include
    present = set(matches[0]) if matches else set()
    if query.include_all:
        keywords |= present
    computed = {"RetrieveURL", "InstanceAvailability"}
    unavailable = sorted(query.include - present - computed) if matches else []
    if unavailable:
        query.warnings.append(f"not held at this level, so not returned: {', '.join(unavailable)}")
    ordered = sorted(keywords, key=lambda k: _tag_and_vr(k)[0])
    base = base_url(request)
    body = [_result(match, ordered, level, base) for match in matches]

    uid_keyword = _UID_KEYWORDS[level]
    uids = " ".join(str(m.get(uid_keyword, "")) for m in matches)
    keys = ",".join(sorted(k for k in query.criteria if k not in scope))
    audit_read(
        session,
        user,
        action=AuditAction.SEARCH,
        object_type=_OBJECT_TYPES[level],
        object_id=scope.get("SeriesInstanceUID") or scope.get("StudyInstanceUID") or "",
        request=request,
        detail=f"results={len(matches)}; keys={keys}; uids={uids}",
    )
    headers = (
        {"Warning": ", ".join(warning_header(w) for w in query.warnings)}
        if query.warnings
        else None
    )
    return dicom_json(body, headers=headers)


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request, session: DbSession, user: ImagingUser) -> JSONResponse:
    return _search(request, session, user, level=Level.STUDY, defaults=STUDY_DEFAULTS, scope={})


@router.get("/series", summary="QIDO-RS: search for series in all studies")
def search_all_series(request: Request, session: DbSession, user: ImagingUser) -> JSONResponse:
    return _search(
        request,
        session,
        user,
        level=Level.SERIES,
        defaults=STUDY_DEFAULTS + SERIES_DEFAULTS,
        scope={},
    )


@router.get("/studies/{study}/series", summary="QIDO-RS: search for series of a study")
def search_study_series(
    study: str, request: Request, session: DbSession, user: ImagingUser
) -> JSONResponse:
    return _search(
        request,
        session,
        user,
        level=Level.SERIES,
        defaults=SERIES_DEFAULTS,
        scope={"StudyInstanceUID": study},
    )


@router.get("/instances", summary="QIDO-RS: search for instances in all studies")
def search_all_instances(request: Request, session: DbSession, user: ImagingUser) -> JSONResponse:
    return _search(
        request,
        session,
        user,
        level=Level.IMAGE,
        defaults=STUDY_DEFAULTS + SERIES_DEFAULTS + INSTANCE_DEFAULTS,
        scope={},
    )


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for instances of a study")
def search_study_instances(
    study: str, request: Request, session: DbSession, user: ImagingUser
) -> JSONResponse:
    return _search(
        request,
        session,
        user,
        level=Level.IMAGE,
        defaults=SERIES_DEFAULTS + INSTANCE_DEFAULTS,
        scope={"StudyInstanceUID": study},
    )


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="QIDO-RS: search for instances of a series",
)
def search_series_instances(
    study: str, series: str, request: Request, session: DbSession, user: ImagingUser
) -> JSONResponse:
    return _search(
        request,
        session,
        user,
        level=Level.IMAGE,
        defaults=INSTANCE_DEFAULTS,
        scope={"StudyInstanceUID": study, "SeriesInstanceUID": series},
    )
