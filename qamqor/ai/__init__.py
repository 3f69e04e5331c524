"""AI triage: model bundles, preprocessing, and the chest and mammography analysers.

Public surface:

- :class:`Manifest`, :func:`read_bundle`, :func:`write_bundle`, :func:`install_bundle`,
  :func:`installed_bundles` — the model bundle format (``*.qmodel``: a zip of ``model.onnx`` and
  ``manifest.json``).
- :class:`Analyser`, :class:`AnalysisResult`, :class:`Finding` — run a bundle on a 2-D image.

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
from qamqor.ai.errors import (
    AIError,
    BundleNotFoundError,
    InvalidBundleError,
    UnanalysableImageError,
)
from qamqor.ai.inference import Analyser, AnalysisResult, Finding

__all__ = [
    "BUNDLE_SUFFIX",
    "AIError",
    "Analyser",
    "AnalysisResult",
    "Bundle",
    "BundleNotFoundError",
    "Calibration",
    "Finding",
    "FindingSpec",
    "InputSpec",
    "InvalidBundleError",
    "Manifest",
    "OperatingPoint",
    "Task",
    "UnanalysableImageError",
    "install_bundle",
    "installed_bundles",
    "read_bundle",
    "write_bundle",
]
