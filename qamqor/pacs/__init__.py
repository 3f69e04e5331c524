"""The DICOM archive: storage, index, DIMSE node, DICOMweb, rendering.

Public surface for the other parts (they import these from ``qamqor.pacs``, never the tables):

- the index, read: :mod:`qamqor.pacs.read` (typed rows of studies, series and instances; the
  worklist's joinable subquery);
- storing and reading files: :class:`ArchiveService`, :class:`StoreResult`, :func:`parse_part10`;
- patient-name search keys: :func:`name_search_key`;
- the "study stable" event: :data:`STUDY_STABLE` (payload ``study_instance_uid``);
- columns on the studies page: :class:`StudyBadge`, :class:`StudyListExtension`,
  :func:`register_study_list_extension`.
"""

from qamqor.pacs.extensions import StudyBadge, StudyListExtension, register_study_list_extension
from qamqor.pacs.parsing import parse_part10
from qamqor.pacs.read import (
    InstanceRow,
    PatientStudy,
    StudySummary,
    facilities,
    image_modalities,
    instance_sizes,
    patient_studies,
    study_has_modality,
    study_instances,
    study_of,
    study_uid_column,
    worklist_studies,
)
from qamqor.pacs.service import ArchiveService, StoreResult, name_search_key
from qamqor.pacs.stability import STUDY_STABLE

__all__ = [
    "STUDY_STABLE",
    "ArchiveService",
    "InstanceRow",
    "PatientStudy",
    "StoreResult",
    "StudyBadge",
    "StudyListExtension",
    "StudySummary",
    "facilities",
    "image_modalities",
    "instance_sizes",
    "name_search_key",
    "parse_part10",
    "patient_studies",
    "register_study_list_extension",
    "study_has_modality",
    "study_instances",
    "study_of",
    "study_uid_column",
    "worklist_studies",
]
