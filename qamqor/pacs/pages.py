"""The archive's web pages: the list of studies, with their patients and series."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydicom import Dataset
from sqlalchemy.orm import Session

from qamqor.core import audit
from qamqor.core.audit import AuditAction
from qamqor.core.auth import Role
from qamqor.core.db import begin_write
from qamqor.core.i18n import N_
from qamqor.http.deps import DbSession, Principal
from qamqor.http.pages import client_source, require_page_role
from qamqor.http.templating import render
from qamqor.pacs.errors import InvalidQueryError
from qamqor.pacs.extensions import (  # noqa: F401 (re-exported: the registry moved there)
    STUDY_LIST_EXTENSIONS,
    StudyBadge,
    StudyListExtension,
    register_study_list_extension,
)
from qamqor.pacs.query import Level, search

router = APIRouter(tags=["pages"], include_in_schema=False)

ImagingUser = Annotated[Principal, Depends(require_page_role(Role.RADIOLOGIST, Role.TECHNOLOGIST))]

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000
_WILDCARDS = ("*", "?")


@dataclass(frozen=True)
class SeriesView:
    uid: str
    number: str
    modality: str
    description: str
    body_part: str
    instances: int


@dataclass(frozen=True)
class StudyView:
    uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    study_date: str
    study_time: str
    accession: str
    description: str
    modalities: str
    series_count: int
    instance_count: int
    series: list[SeriesView] = field(default_factory=list)
    badges: dict[str, StudyBadge] = field(default_factory=dict)


@dataclass
class StudyFilter:
    """The search form's fields, as typed."""

    name: str = ""
    patient_id: str = ""
    accession: str = ""
    date_from: str = ""
    date_to: str = ""

    def criteria(self) -> dict[str, str]:
        """DICOM match strings; ``ValueError`` names what was typed wrongly."""
        criteria: dict[str, str] = {}
        name = self.name.strip()
        if name:
            # People type parts of a name, in any case, with spaces: match each part in order.
            criteria["PatientName"] = (
                name if any(w in name for w in _WILDCARDS) else "*" + "*".join(name.split()) + "*"
            )
        for keyword, value in (
            ("PatientID", self.patient_id),
            ("AccessionNumber", self.accession),
        ):
            value = value.strip()
            if value:
                criteria[keyword] = value if any(w in value for w in _WILDCARDS) else value + "*"
        low, high = _iso_date(self.date_from), _iso_date(self.date_to)
        if low and high and low > high:
            low, high = high, low
        if low or high:
            criteria["StudyDate"] = f"{low}-{high}"
        return criteria

    def query(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def _iso_date(value: str) -> str:
    """``YYYY-MM-DD`` (what ``<input type=date>`` sends) as a DICOM date, or ``ValueError``."""
    value = value.strip()
    if not value:
        return ""
    return date.fromisoformat(value).strftime("%Y%m%d")


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value)


def _int(dataset: Dataset, keyword: str) -> int:
    value = dataset.get(keyword)
    try:
        return int(value) if value not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


def _int_param(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


def _modalities(dataset: Dataset) -> str:
    value: Any = dataset.get("ModalitiesInStudy")
    if value is None:
        return ""
    values = [value] if isinstance(value, str) else list(value)
    return ", ".join(str(v) for v in values if v)


def _series_of(session: Session, study_uids: list[str]) -> dict[str, list[SeriesView]]:
    found: dict[str, list[SeriesView]] = defaultdict(list)
    if not study_uids:
        return found
    criteria = {"StudyInstanceUID": "\\".join(study_uids)}
    for ds in search(session, level=Level.SERIES, criteria=criteria):
        found[_text(ds, "StudyInstanceUID")].append(
            SeriesView(
                uid=_text(ds, "SeriesInstanceUID"),
                number=_text(ds, "SeriesNumber"),
                modality=_text(ds, "Modality"),
                description=_text(ds, "SeriesDescription"),
                body_part=_text(ds, "BodyPartExamined"),
                instances=_int(ds, "NumberOfSeriesRelatedInstances"),
            )
        )
    return found


def _study_view(ds: Dataset, series: list[SeriesView]) -> StudyView:
    return StudyView(
        uid=_text(ds, "StudyInstanceUID"),
        patient_name=_text(ds, "PatientName"),
        patient_id=_text(ds, "PatientID"),
        birth_date=_text(ds, "PatientBirthDate"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        accession=_text(ds, "AccessionNumber"),
        description=_text(ds, "StudyDescription"),
        modalities=_modalities(ds),
        series_count=_int(ds, "NumberOfStudyRelatedSeries"),
        instance_count=_int(ds, "NumberOfStudyRelatedInstances"),
        series=series,
    )


@router.get("/studies")
def studies_page(
    request: Request,
    session: DbSession,
    user: ImagingUser,
    name: str = "",
    patient_id: str = "",
    accession: str = "",
    date_from: str = "",
    date_to: str = "",
    page: str = "1",
    size: str = "",
    sort: str = "",
) -> Response:
    """Studies filtered by the search form; each shown study is audited.

    Sorted by the first registered extension's order (the AI priority: most suspicious first),
    then newest first; ``sort=date`` for newest first only.
    """
    # Hand-edited URLs get a sensible page rather than a validation error.
    page_number = min(max(_int_param(page, 1), 1), MAX_PAGE)
    page_size = min(max(_int_param(size, DEFAULT_PAGE_SIZE), 1), MAX_PAGE_SIZE)
    form = StudyFilter(name, patient_id, accession, date_from, date_to)
    extensions = list(STUDY_LIST_EXTENSIONS)
    sorter = next((e for e in extensions if e.name == sort), None)
    if sorter is None and sort != "date" and extensions:
        sorter = extensions[0]
    order = sorter.order_by() if sorter is not None else []
    error = ""
    studies: list[StudyView] = []
    has_next = False
    try:
        criteria = form.criteria()
    except ValueError:
        error = N_("Dates are written as YYYY-MM-DD.")
    else:
        try:
            # One more than a page: tells whether a next page exists without counting them all.
            found = search(
                session,
                level=Level.STUDY,
                criteria=criteria,
                limit=page_size + 1,
                offset=(page_number - 1) * page_size,
                order=order,
            )
        except InvalidQueryError:
            error = N_("The search could not be run. Check the fields and try again.")
            found = []
        has_next = len(found) > page_size
        found = found[:page_size]
        series = _series_of(session, [_text(ds, "StudyInstanceUID") for ds in found])
        studies = [_study_view(ds, series.get(_text(ds, "StudyInstanceUID"), [])) for ds in found]
        by_uid = {study.uid: study for study in studies}
        for extension in extensions:
            for uid, badge in extension.badges(session, list(by_uid)).items():
                if uid in by_uid:
                    by_uid[uid].badges[extension.name] = badge

    source = client_source(request)
    begin_write(session)
    audit.record(
        session,
        AuditAction.VIEW_PAGE,
        actor=user.username,
        object_type="page",
        object_id="/studies",
        source=source,
        detail=f"{len(studies)} studies shown, page {page_number}",
    )
    audit.record(
        session,
        AuditAction.VIEW,
        actor=user.username,
        object_type="study",
        object_id=[study.uid for study in studies],
        source=source,
        detail="studies list",
    )
    session.commit()

    query = form.query()
    if page_size != DEFAULT_PAGE_SIZE:
        query["size"] = str(page_size)
    if sort:
        query["sort"] = sort
    sort_options = [(e.name, e.sort_label) for e in extensions]
    if extensions:
        sort_options.append(("date", N_("Newest first")))
    current_sort = sorter.name if sorter is not None else "date"

    def page_url(number: int) -> str:
        return "/studies?" + urlencode({**query, "page": str(number)})

    return render(
        request,
        "pacs/studies.html",
        {
            "form": form,
            "studies": studies,
            "error": error,
            "page": page_number,
            "previous_url": page_url(page_number - 1) if page_number > 1 else "",
            "next_url": page_url(page_number + 1) if has_next else "",
            "searched": bool(form.query()),
            "extensions": extensions,
            "sort_options": sort_options,
            "current_sort": current_sort,
            "sort_urls": {
                name: "/studies?" + urlencode({**query, "sort": name})
                for name, _label in sort_options
            },
        },
    )
