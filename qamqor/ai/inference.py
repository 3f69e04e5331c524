"""Run a model bundle on one image with onnxruntime (CPU).

The network is fully convolutional: it maps the whole image to a heat map of logits, one cell per
``stride`` model pixels. The image score is the calibrated maximum of the heat map; findings are
the heat map's strongest separated peaks, reported in the caller's pixel coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from qamqor.ai.bundle import Bundle, Calibration, Manifest, Task, read_bundle
from qamqor.ai.errors import InvalidBundleError, UnanalysableImageError
from qamqor.ai.preprocess import Prepared, Spacing, prepare
from qamqor.core.i18n import N_, Message

LATERALITIES = ("L", "R")
CHEST_WALL_SIDES = ("left", "right")
CANONICAL_CHEST_WALL = "left"
"""Where the chest wall is in a mammography model's canonical (right-breast) orientation."""


@dataclass(frozen=True)
class Finding:
    """A place the model points at: centre (x, y) in the input's pixels and its probability."""

    x: float
    y: float
    score: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.x) and math.isfinite(self.y)):
            raise ValueError("a finding needs finite coordinates")
        if self.x < 0 or self.y < 0:
            raise ValueError("finding coordinates are pixel positions (>= 0)")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError("a finding's score is a probability in 0..1")


@dataclass(frozen=True)
class AnalysisResult:
    """The analysis of one image."""

    score: float
    """Probability of a suspicious finding in the image (calibrated in cross-validation)."""
    findings: tuple[Finding, ...]
    """Strongest first; the first one is where the image score comes from."""
    model: str
    """``name-version`` of the bundle."""
    heatmap: np.ndarray = field(repr=False)
    """Probabilities per heat-map cell, in the input's orientation (for overlays)."""
    input_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError("the score is a probability in 0..1")

    def heatmap_image(self) -> np.ndarray:
        """The heat map resized to the input image (float32 probabilities, rows x columns)."""
        height, width = self.input_shape
        pil = Image.fromarray(np.ascontiguousarray(self.heatmap, dtype=np.float32), mode="F")
        return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))

    def as_dict(self) -> dict[str, object]:
        return {
            "score": round(self.score, 4),
            "findings": [
                {"x": round(f.x, 1), "y": round(f.y, 1), "score": round(f.score, 4)}
                for f in self.findings
            ],
            "model": self.model,
        }


def calibrate(logits: np.ndarray | float, calibration: Calibration) -> np.ndarray:
    """Heat-map logits to probabilities."""
    z = calibration.slope * np.asarray(logits, dtype=np.float64) + calibration.intercept
    result: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))
    return result


def find_peaks(
    heat: np.ndarray, *, stride: int, min_distance: float, max_peaks: int
) -> list[tuple[float, float, float]]:
    """The strongest separated maxima of a heat map of logits.

    Greedy non-maximum suppression: take the largest cell, refine its position by the centroid
    of its 3x3 neighbourhood, blank a disc of ``min_distance`` model pixels, repeat.

    Returns
    -------
    list of (x, y, logit)
        Positions in model pixels (cell (i, j) is centred on (stride * j, stride * i)).
    """
    work = np.array(heat, dtype=np.float64)
    rows, cols = work.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    radius = max(min_distance / stride, 1.0)
    peaks: list[tuple[float, float, float]] = []
    for _ in range(max_peaks):
        index = int(np.argmax(work))
        value = work.flat[index]
        if not np.isfinite(value):
            break
        i, j = divmod(index, cols)
        i0, i1, j0, j1 = max(i - 1, 0), min(i + 2, rows), max(j - 1, 0), min(j + 2, cols)
        patch = heat[i0:i1, j0:j1].astype(np.float64)
        weights = np.exp(patch - patch.max())
        ci = float((weights * yy[i0:i1, j0:j1]).sum() / weights.sum())
        cj = float((weights * xx[i0:i1, j0:j1]).sum() / weights.sum())
        peaks.append((cj * stride, ci * stride, float(heat[i, j])))
        work[(yy - i) ** 2 + (xx - j) ** 2 <= radius**2] = -np.inf
    return peaks


class Analyser:
    """A loaded bundle, ready to analyse images.

    Parameters
    ----------
    bundle:
        A :class:`Bundle` or the path of a ``.qmodel`` file (read and verified).
    threads:
        onnxruntime intra-op threads.
    """

    def __init__(self, bundle: Bundle | Path | str, *, threads: int = 2) -> None:
        import onnxruntime as ort

        if not isinstance(bundle, Bundle):
            bundle = read_bundle(Path(bundle))
        self.bundle = bundle
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                bundle.onnx, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidBundleError(
                f"onnxruntime cannot load the model ({type(exc).__name__})"
            ) from None
        names = {node.name for node in self._session.get_inputs()}
        if self.manifest.input.tensor_name not in names:
            raise InvalidBundleError("the model has no input named as in its manifest")

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    def heatmap(self, prepared: Prepared) -> np.ndarray:
        """Heat-map logits for a prepared input, cropped to the unpadded image."""
        spec = self.manifest
        (out,) = self._session.run(
            [spec.output.tensor_name], {spec.input.tensor_name: prepared.tensor}
        )
        heat: np.ndarray = np.asarray(out, dtype=np.float32)[0, 0]
        stride = spec.output.stride
        rows, cols = math.ceil(prepared.height / stride), math.ceil(prepared.width / stride)
        return heat[:rows, :cols]

    def analyse(
        self,
        image: np.ndarray,
        *,
        pixel_spacing_mm: Spacing = None,
        laterality: str | None = None,
        chest_wall: str | None = None,
    ) -> AnalysisResult:
        """Analyse one 2-D grey image in display orientation.

        Parameters
        ----------
        image:
            ``uint8``, or float in 0..1 (other integer types are min-max scaled); brighter =
            denser (MONOCHROME2 after VOI LUT).
        pixel_spacing_mm:
            Row and column spacing (or one value) in mm, if known; otherwise the image is scaled
            so that its longer side matches the field of view of the training images.
        laterality:
            ``"L"`` or ``"R"``; required for mammograms. The model works on right breasts as
            displayed by hanging protocols (chest wall at the left edge). Unless ``chest_wall``
            says otherwise, a left breast is assumed to be displayed mirrored (chest wall at
            the right edge) and is mirrored before analysis; findings are mirrored back.
        chest_wall:
            ``"left"`` or ``"right"``: the image edge the chest wall is on, when known (from
            DICOM Patient Orientation: row direction ``A`` means left, ``P`` means right). It
            decides the mirroring instead of the laterality, so an image stored either way is
            analysed the same.

        Raises
        ------
        UnanalysableImageError
            The image cannot be analysed (the message says why; no patient data in it).
        """
        manifest = self.manifest
        mirror = False
        if laterality is not None and laterality not in LATERALITIES:
            raise UnanalysableImageError(Message(N_("laterality must be L or R")))
        if chest_wall is not None and chest_wall not in CHEST_WALL_SIDES:
            raise UnanalysableImageError(Message(N_("the chest wall side must be left or right")))
        if manifest.task is Task.MAMMO:
            if laterality is None:
                raise UnanalysableImageError(
                    Message(N_("a mammogram needs its laterality (L or R)"))
                )
            if chest_wall is not None:
                mirror = chest_wall != CANONICAL_CHEST_WALL
            else:
                mirror = laterality != manifest.input.canonical_laterality
        prepared = prepare(image, spec=manifest.input, spacing=pixel_spacing_mm, mirror=mirror)
        heat = self.heatmap(prepared)
        stride = manifest.output.stride
        min_distance = manifest.findings.min_distance_mm / manifest.input.pixel_spacing_mm
        peaks = find_peaks(
            heat, stride=stride, min_distance=min_distance, max_peaks=manifest.findings.max_findings
        )
        probabilities = calibrate(heat, manifest.calibration).astype(np.float32)
        findings: list[Finding] = []
        for rank, (xm, ym, logit) in enumerate(peaks):
            probability = float(calibrate(logit, manifest.calibration))
            if rank > 0 and probability < manifest.findings.min_score:
                break
            x, y = prepared.to_input(xm, ym)
            findings.append(Finding(x=x, y=y, score=probability))
        if mirror:
            probabilities = probabilities[:, ::-1]
        score = findings[0].score if findings else 0.0
        return AnalysisResult(
            score=score,
            findings=tuple(findings),
            model=manifest.model_id,
            heatmap=np.ascontiguousarray(probabilities),
            input_shape=prepared.input_shape,
        )
