"""One image through the pipeline: route, preprocess, analyse; and a study's images combined.

Combination (documented for the radiologists who read the scores):

- **Mammography, per breast**: the maximum of the scores of that breast's views (CC, MLO). A
  lesion is often seen clearly in one view only; averaging would halve its score.
- **Mammography, per study**: the maximum of the two breasts' scores: the study is as
  suspicious as its most suspicious breast.
- **Chest, per study**: the maximum over its frontal (PA/AP) radiographs.

A study with both chest radiographs and mammograms takes the higher priority of the two.

Priority from a score and the active model's operating points (cross-validated thresholds):
``high`` at or above the ``default`` point (90% specificity for the shipped models),
``medium`` at or above the ``sensitive`` point when the bundle has one (else half the default
threshold), ``low`` below; ``not_analysed`` when no image of the study could be analysed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from qamqor.ai.bundle import Manifest, Task
from qamqor.ai.dicom_input import DicomImage, chest_wall_from_image, load_dicom_image
from qamqor.ai.enums import Priority as Priority  # it was defined here first
from qamqor.ai.errors import AIError, UnanalysableImageError
from qamqor.ai.inference import AnalysisResult
from qamqor.ai.registry import ModelStore
from qamqor.ai.routing import Route, RouteKind, guess_task_from_image, looks_like_chest, route
from qamqor.core.i18n import N_, Message

logger = logging.getLogger(__name__)


def priority_for(score: float, manifest: Manifest) -> Priority:
    """The priority a score gets under ``manifest``'s operating points (module docstring)."""
    default = manifest.operating_points["default"].threshold
    sensitive = manifest.operating_points.get("sensitive")
    medium = sensitive.threshold if sensitive is not None else default / 2
    if score >= default:
        return Priority.HIGH
    if score >= min(medium, default):
        return Priority.MEDIUM
    return Priority.LOW


@dataclass
class ImageAnalysis:
    """What happened to one image: analysed (``result``) or left alone (``reason``)."""

    sop_instance_uid: str
    task: Task | None
    reason: Message
    view: str = ""
    laterality: str = ""
    result: AnalysisResult | None = None
    manifest: Manifest | None = None
    image: DicomImage | None = field(default=None, repr=False)

    @property
    def analysed(self) -> bool:
        return self.result is not None


def _skipped(
    uid: str, task: Task | None, reason: Message, routed: Route | None = None
) -> ImageAnalysis:
    return ImageAnalysis(
        sop_instance_uid=uid,
        task=task,
        reason=reason,
        view=routed.view if routed else "",
        laterality=routed.laterality if routed else "",
    )


def analyse_dataset(
    ds: Dataset, models: ModelStore, *, task: Task | None = None, keep_image: bool = False
) -> ImageAnalysis:
    """Route, preprocess and analyse one DICOM instance.

    ``task`` forces an analyser (``qamqor analyze --task``) past the routing rules. Problems
    with the image come back as a ``reason``, never as an exception; a broken model bundle
    raises (:class:`~qamqor.ai.errors.InvalidBundleError`).
    """
    uid = str(ds.get("SOPInstanceUID", "")).strip()
    routed = route(ds)
    if task is None and routed.kind is RouteKind.SKIP:
        return _skipped(uid, routed.task, routed.reason, routed)
    chosen = task or routed.task
    assert chosen is not None
    try:
        image = load_dicom_image(ds)
    except UnanalysableImageError as exc:
        return _skipped(uid, chosen, exc.reason, routed)
    if (
        task is None
        and routed.kind is RouteKind.CHECK_IMAGE
        and not looks_like_chest(image.shape, image.spacing)
    ):
        return _skipped(
            uid,
            None,
            Message(
                N_(
                    "the header does not say enough (body part or view), and the image is not "
                    "shaped like a frontal chest radiograph"
                )
            ),
            routed,
        )
    analyser = models.analyser(chosen)
    if analyser is None:
        return _skipped(uid, chosen, no_model_installed(chosen), routed)
    laterality = image.laterality
    chest_wall = image.chest_wall
    if chosen is Task.MAMMO:
        if chest_wall is None:
            chest_wall = chest_wall_from_image(image.pixels)
        if laterality is None and task is not None:
            # Forced past the routing rules: the displayed orientation stands in for the side.
            laterality = "R" if chest_wall == "left" else "L"
    try:
        result = analyser.analyse(
            image.pixels,
            pixel_spacing_mm=image.spacing,
            laterality=laterality if chosen is Task.MAMMO else None,
            chest_wall=chest_wall if chosen is Task.MAMMO else None,
        )
    except UnanalysableImageError as exc:
        return _skipped(uid, chosen, exc.reason, routed)
    return ImageAnalysis(
        sop_instance_uid=uid,
        task=chosen,
        reason=(
            routed.reason
            if task is None
            else Message(N_("analysed as %(task)s (forced)"), task=chosen.value)
        ),
        view=routed.view,
        laterality=laterality or "",
        result=result,
        manifest=analyser.manifest,
        image=image if keep_image else None,
    )


def read_png(path: Path) -> np.ndarray:
    """A PNG (or other Pillow-readable) image as grey levels 0..1 (colour is converted)."""
    try:
        with Image.open(path) as pil:
            pil.load()
            if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(pil, dtype=np.float64)
                high = 65535.0 if pil.mode.startswith("I;16") else max(float(array.max()), 1.0)
                return (array / high).astype(np.float32)
            return np.asarray(pil.convert("L"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnanalysableImageError(
            Message(N_("not a readable image (%(error)s)"), error=type(exc).__name__)
        ) from None


def analyse_image_file(
    path: Path, models: ModelStore, *, task: Task | None = None
) -> ImageAnalysis:
    """A DICOM file or a plain image (PNG...) through :func:`analyse_dataset` or its equivalent.

    A plain image has no header: its task comes from ``task`` or from the image itself
    (:func:`~qamqor.ai.routing.guess_task_from_image`), its spacing is unknown, and a
    mammogram's side is read from where its chest wall is.

    Raises
    ------
    UnanalysableImageError
        The file is neither DICOM nor a readable image.
    """
    try:
        ds = dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError):
        ds = None
    except OSError as exc:
        raise UnanalysableImageError(
            Message(N_("cannot read the file (%(error)s)"), error=type(exc).__name__)
        ) from None
    if ds is not None and "SOPClassUID" in ds:
        return analyse_dataset(ds, models, task=task)
    pixels = read_png(path)
    chosen = task or guess_task_from_image(pixels)
    analyser = models.analyser(chosen)
    if analyser is None:
        return _skipped("", chosen, no_model_installed(chosen))
    chest_wall = chest_wall_from_image(pixels) if chosen is Task.MAMMO else None
    laterality = ("R" if chest_wall == "left" else "L") if chosen is Task.MAMMO else None
    try:
        result = analyser.analyse(pixels, laterality=laterality, chest_wall=chest_wall)
    except UnanalysableImageError as exc:
        return _skipped("", chosen, exc.reason)
    return ImageAnalysis(
        sop_instance_uid="",
        task=chosen,
        reason=Message(N_("plain image analysed as %(task)s"), task=chosen.value),
        laterality=laterality or "",
        result=result,
        manifest=analyser.manifest,
    )


@dataclass(frozen=True)
class StudySummary:
    """A study's combined AI result (module docstring)."""

    task: Task | None
    score: float | None
    priority: Priority
    model: str
    reasons: list[Message]
    """What was analysed, or why nothing was (at most three reasons)."""
    breast_scores: dict[str, float]
    """Mammography: ``{"L": ..., "R": ...}`` for the breasts analysed."""


def combine(images: list[ImageAnalysis]) -> StudySummary:
    """Per-breast and per-study scores and the study's priority (module docstring)."""
    analysed = [i for i in images if i.analysed]
    if not analysed:
        reasons = sorted({i.reason for i in images}, key=Message.english)[:3]
        task = next((i.task for i in images if i.task is not None), None)
        return StudySummary(
            task,
            None,
            Priority.NOT_ANALYSED,
            "",
            reasons or [Message(N_("the study has no images"))],
            {},
        )
    candidates: list[tuple[int, float, Task, str, dict[str, float]]] = []
    for task in (Task.MAMMO, Task.CHEST):
        of_task = [i for i in analysed if i.task is task]
        if not of_task:
            continue
        breast_scores: dict[str, float] = {}
        if task is Task.MAMMO:
            for item in of_task:
                assert item.result is not None
                side = item.laterality or "?"
                breast_scores[side] = max(breast_scores.get(side, 0.0), item.result.score)
            score = max(breast_scores.values())
        else:
            score = max(i.result.score for i in of_task if i.result is not None)
        manifest = next(i.manifest for i in of_task if i.manifest is not None)
        priority = priority_for(score, manifest)
        candidates.append((priority.rank, score, task, manifest.model_id, breast_scores))
    rank, score, task, model, breast_scores = max(candidates, key=lambda c: (c[0], c[1]))
    priority = next(p for p in Priority if p.rank == rank)
    left_alone = len(images) - len(analysed)
    reasons = [Message(N_("images analysed: %(count)d"), count=len(analysed))]
    if left_alone:
        reasons.append(Message(N_("images left alone: %(count)d"), count=left_alone))
    return StudySummary(task, score, priority, model, reasons, breast_scores)


def no_model_installed(task: Task) -> Message:
    if task is Task.MAMMO:
        return Message(N_("no mammography model is installed"))
    return Message(N_("no chest radiograph model is installed"))


def analysis_error_reason(exc: BaseException) -> Message:
    """Why an analysis failed, for people (no patient data)."""
    if isinstance(exc, UnanalysableImageError):
        return exc.reason
    if isinstance(exc, AIError):
        return Message(N_("the analysis failed: %(detail)s"), detail=exc.message)
    return Message(N_("unexpected error (%(error)s)"), error=type(exc).__name__)
