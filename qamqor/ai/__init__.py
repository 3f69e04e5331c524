"""AI triage: model bundles, preprocessing, and the chest and mammography analysers.

Public surface:

- :class:`Manifest`, :func:`read_bundle`, :func:`write_bundle`, :func:`install_bundle`,
  :func:`installed_bundles` — the model bundle format (``*.qmodel``: a zip of ``model.onnx`` and
  ``manifest.json``).
- :class:`Analyser`, :class:`AnalysisResult`, :class:`Finding` — run a bundle on a 2-D image.
- For the other parts (reading): the results, read (:mod:`qamqor.ai.read`: :func:`study_result`,
  :func:`priority_of`, :func:`top_findings`, the joinable :func:`study_results`), the coded
  values :class:`Priority` and :class:`JobStatus`, the :data:`PRIORITY_SET` event (payload
  ``study_instance_uid``, ``priority``) and :func:`complete_header` (patient and study
  attributes copied from a source image into a derived object).

The pipeline around them (import from the modules):

- ``routing`` (which analyser an instance goes to, and why not), ``dicom_input`` (pixels as a
  radiologist sees them), ``analysis`` (one image; a study's per-breast and per-study scores and
  priority), ``registry`` (installed bundles, the active one per task), ``results`` (SR TID 1500
  and overlays), ``pipeline`` and ``jobs`` (stable study -> job -> results, no job lost),
  ``models`` (tables), ``service`` / ``router`` (API and the studies page's AI column), ``cli``.
"""

from qamqor.ai.bundle import (
    BUNDLE_SUFFIX,
    Bundle,
    Calibration,
    FindingSpec,
    InputSpec,
    Manifest,
    OperatingPoint,
    Task,
    install_bundle,
    installed_bundles,
    read_bundle,
    write_bundle,
)
from qamqor.ai.enums import JobStatus, Priority
from qamqor.ai.errors import (
    AIError,
    BundleNotFoundError,
    InvalidBundleError,
    UnanalysableImageError,
)
from qamqor.ai.events import PRIORITY_SET
from qamqor.ai.inference import Analyser, AnalysisResult, Finding
from qamqor.ai.read import (
    FindingMark,
    ImageResult,
    StudyResult,
    TopFinding,
    priority_of,
    study_result,
    study_results,
    top_findings,
)
from qamqor.ai.results import complete_header

__all__ = [
    "BUNDLE_SUFFIX",
    "PRIORITY_SET",
    "AIError",
    "Analyser",
    "AnalysisResult",
    "Bundle",
    "BundleNotFoundError",
    "Calibration",
    "Finding",
    "FindingMark",
    "FindingSpec",
    "ImageResult",
    "InputSpec",
    "InvalidBundleError",
    "JobStatus",
    "Manifest",
    "OperatingPoint",
    "Priority",
    "StudyResult",
    "Task",
    "TopFinding",
    "UnanalysableImageError",
    "complete_header",
    "install_bundle",
    "installed_bundles",
    "priority_of",
    "read_bundle",
    "study_result",
    "study_results",
    "top_findings",
    "write_bundle",
]
