"""Which analyser, if any, an image goes to: from its DICOM header, and its pixels where the
header is silent.

The rules, as a reading radiologist would expect them:

- **Digitised films** come as Secondary Capture with the radiograph's modality (CR, DX, RG,
  MG) and are analysed like the others; other secondary captures are not.
- **Only images meant for reading.** "For processing" images (the raw detector data of DX and
  digital mammography, SOP classes ``...1.1.1.1`` and ``...1.1.2.1``, or Presentation Intent
  Type ``FOR PROCESSING``) are left alone: they are not what the radiologist sees and the models
  never learnt from them. So are objects that are not projection radiographs (CT, SR, secondary
  captures, presentation states, our own results), multi-frame tomosynthesis, and images whose
  Image Type says ``LOCALIZER``.
- **Mammography**: Modality ``MG``, a digital mammography SOP class, or a CR/DX/RG image of body
  part ``BREAST``. Views ``CC`` and ``MLO`` (View Position, else the View Code Sequence: SNOMED
  399162004 / SRT R-10242 cranio-caudal, 399368009 / R-10226 medio-lateral oblique) are analysed;
  other stated views (ML, LM, XCCL, spot compression or magnification views...) are not, as
  their geometry differs from what the model learnt. A view that is not stated is analysed
  (recorded as unknown). A mammogram with no laterality is not analysed (the breast cannot be
  oriented nor combined with its other view).
- **Chest**: a CR/DX/RG image of body part ``CHEST`` (or ``THORAX``, ``LUNG``) in ``PA`` or
  ``AP`` view; lateral views (``LL``, ``RL``, ``LATERAL``) are not analysed. Where Body Part
  Examined is empty, the study, series and protocol descriptions are searched for chest words
  (en, ru, kk); where they are silent too, the image decides (:func:`looks_like_chest`).
- Everything else is left alone with the reason recorded.

Text matching is on upper-cased header values; no patient data is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from pydicom import Dataset

from qamqor.ai.bundle import Task
from qamqor.core.i18n import N_, Message


class SopClass(StrEnum):
    """Storage SOP classes of projection radiography (DICOM PS3.4 Annex B.5)."""

    CR = "1.2.840.10008.5.1.4.1.1.1"
    """Computed Radiography Image Storage."""
    DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
    """Digital X-Ray Image Storage - For Presentation."""
    DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
    """Digital X-Ray Image Storage - For Processing."""
    MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
    """Digital Mammography X-Ray Image Storage - For Presentation."""
    MG_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
    """Digital Mammography X-Ray Image Storage - For Processing."""
    TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
    """Breast Tomosynthesis Image Storage."""
    SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
    """Secondary Capture Image Storage: digitised films (Modality CR/DX/RG/MG) are analysed,
    other secondary captures (screenshots, our own overlays, Modality OT) are not."""


#: SOP classes a radiograph or mammogram to analyse can have (the index is filtered on these).
CANDIDATE_SOP_CLASSES = frozenset(
    {SopClass.CR, SopClass.DX_PRESENTATION, SopClass.MG_PRESENTATION, SopClass.SECONDARY_CAPTURE}
)
_PROCESSING = frozenset({SopClass.DX_PROCESSING, SopClass.MG_PROCESSING})
#: Modalities of projection radiographs (RG: radiographic imaging, as digitised films say).
PROJECTION_MODALITIES = frozenset({"CR", "DX", "RG", "MG"})
_CHEST_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "LUNGS"})
_CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "ГРУД", "ОГК", "ЛЕГК", "КЕУДЕ", "ӨКПЕ", "ФЛЮОРО")
_FRONTAL_CHEST = frozenset({"PA", "AP"})
_LATERAL_CHEST = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})
MAMMO_VIEWS = frozenset({"CC", "MLO"})
#: View Code Sequence codes (SNOMED CT and the older SRT) of the views analysed.
_VIEW_CODES = {
    "399162004": "CC",
    "R-10242": "CC",
    "399368009": "MLO",
    "R-10226": "MLO",
}
#: View Modifier codes of spot compression and magnification (not analysed).
_SPECIAL_VIEW_MODIFIERS = frozenset({"399055006", "R-102D2", "398993009", "R-102D6"})


class RouteKind(StrEnum):
    ANALYSE = "analyse"
    SKIP = "skip"
    CHECK_IMAGE = "check_image"
    """The header suggests a chest radiograph but does not say so: the image decides."""


@dataclass(frozen=True)
class Route:
    """Where an image goes, and why."""

    kind: RouteKind
    task: Task | None
    reason: Message
    """Why it is analysed or left alone (shown to people; no patient data)."""
    view: str = ""
    """``CC``/``MLO`` for mammograms, ``PA``/``AP`` for chest radiographs; "" if not stated."""
    laterality: str = ""

    @property
    def analysed(self) -> bool:
        return self.kind is not RouteKind.SKIP


def _upper(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return "\\".join(str(v) for v in value).strip().upper()
    return str(value).strip().upper()


def _skip(reason: Message, task: Task | None = None) -> Route:
    return Route(RouteKind.SKIP, task, reason)


def _mammo_view(ds: Dataset) -> tuple[str, bool]:
    """(view, special): the stated view and whether it is a spot or magnification view."""
    special = False
    for item in ds.get("ViewCodeSequence") or []:
        for modifier in item.get("ViewModifierCodeSequence") or []:
            if str(modifier.get("CodeValue", "")) in _SPECIAL_VIEW_MODIFIERS:
                special = True
    view = _upper(ds, "ViewPosition")
    if not view:
        for item in ds.get("ViewCodeSequence") or []:
            view = _VIEW_CODES.get(str(item.get("CodeValue", "")), "")
            if view:
                break
    return view, special


def _laterality(ds: Dataset) -> str:
    for keyword in ("ImageLaterality", "Laterality"):
        value = _upper(ds, keyword)
        if value in ("L", "R"):
            return value
    return ""


def route(ds: Dataset) -> Route:
    """Route one instance by its header (see the module docstring for the rules)."""
    sop_class = str(ds.get("SOPClassUID", "")).strip()
    modality = _upper(ds, "Modality")
    if sop_class in _PROCESSING or _upper(ds, "PresentationIntentType") == "FOR PROCESSING":
        return _skip(
            Message(
                N_(
                    "a 'for processing' image (raw detector data): only images for "
                    "presentation are analysed"
                )
            )
        )
    if sop_class == SopClass.TOMOSYNTHESIS:
        return _skip(Message(N_("breast tomosynthesis is not analysed")))
    if sop_class not in CANDIDATE_SOP_CLASSES:
        return _skip(
            Message(
                N_("not a projection radiograph (modality %(modality)s)"), modality=modality or "-"
            )
        )
    if modality and modality not in PROJECTION_MODALITIES:
        return _skip(Message(N_("modality %(modality)s is not analysed"), modality=modality))
    if sop_class == SopClass.SECONDARY_CAPTURE and not modality:
        return _skip(Message(N_("a secondary capture that does not say it is a radiograph")))
    if "LOCALIZER" in _upper(ds, "ImageType").split("\\"):
        return _skip(Message(N_("a localizer image")))
    body_part = _upper(ds, "BodyPartExamined")
    if modality == "MG" or sop_class == SopClass.MG_PRESENTATION or body_part == "BREAST":
        view, special = _mammo_view(ds)
        laterality = _laterality(ds)
        if special:
            return _skip(
                Message(N_("spot compression and magnification views are not analysed")),
                Task.MAMMO,
            )
        if view and view not in MAMMO_VIEWS:
            return _skip(
                Message(
                    N_("mammography view %(view)s is not analysed (CC and MLO only)"), view=view
                ),
                Task.MAMMO,
            )
        if not laterality:
            return _skip(
                Message(N_("a mammogram with no laterality (ImageLaterality or Laterality)")),
                Task.MAMMO,
            )
        reason = (
            Message(N_("mammogram %(laterality)s %(view)s"), laterality=laterality, view=view)
            if view
            else Message(N_("mammogram %(laterality)s, view not stated"), laterality=laterality)
        )
        return Route(RouteKind.ANALYSE, Task.MAMMO, reason, view, laterality)
    view = _upper(ds, "ViewPosition")
    if body_part in _CHEST_PARTS or (not body_part and _chest_words(ds)):
        if view in _LATERAL_CHEST:
            return _skip(
                Message(
                    N_("lateral chest view (%(view)s) is not analysed (PA and AP only)"), view=view
                ),
                Task.CHEST,
            )
        if view and view not in _FRONTAL_CHEST:
            return _skip(
                Message(N_("chest view %(view)s is not analysed (PA and AP only)"), view=view),
                Task.CHEST,
            )
        if not view:
            return Route(
                RouteKind.CHECK_IMAGE,
                Task.CHEST,
                Message(N_("chest radiograph, view not stated")),
            )
        return Route(
            RouteKind.ANALYSE, Task.CHEST, Message(N_("chest radiograph %(view)s"), view=view), view
        )
    if body_part:
        return _skip(Message(N_("body part %(body_part)s is not analysed"), body_part=body_part))
    if view in _LATERAL_CHEST:
        return _skip(Message(N_("lateral view (%(view)s) is not analysed"), view=view))
    return Route(
        RouteKind.CHECK_IMAGE,
        Task.CHEST,
        Message(N_("body part not stated: the image decides")),
        view,
    )


def _chest_words(ds: Dataset) -> bool:
    text = " ".join(
        _upper(ds, k) for k in ("StudyDescription", "SeriesDescription", "ProtocolName")
    )
    return any(word in text for word in _CHEST_WORDS)


def looks_like_chest(shape: tuple[int, int], spacing: tuple[float, float] | None) -> bool:
    """Whether an image whose header is silent is shaped like an adult frontal chest film.

    Chest cassettes and detectors are 35 x 43 cm or 43 x 43 cm: the sides' ratio lies within
    0.75..1.33, and with a known spacing each side measures 250..500 mm. Extremity, skull and
    dental images fail one or the other; an abdomen on a chest-sized detector would pass, which
    is why only images whose header says nothing about the body part get here.
    """
    rows, columns = shape
    ratio = rows / max(columns, 1)
    if not 0.75 <= ratio <= 1.34:
        return False
    if spacing is not None:
        height_mm, width_mm = rows * spacing[0], columns * spacing[1]
        return bool(250 <= height_mm <= 500 and 250 <= width_mm <= 500)
    return min(rows, columns) >= 1000  # a computed or digital radiograph, not a thumbnail


def guess_task_from_image(pixels: np.ndarray) -> Task:
    """A headerless image (PNG): mammogram or chest radiograph?

    A mammogram is mostly black background around one breast on one side; a chest radiograph
    fills the frame and is roughly symmetric. Mammograms have a fifth or more of their pixels
    near black, or one half of the image much brighter than the other. (On the shared data:
    mini-MIAS 5th percentile 36% dark pixels, JSRT at most 11%.)
    """
    dark = float((pixels < 0.08).mean())
    half = pixels.shape[1] // 2
    left, right = float(pixels[:, :half].mean()), float(pixels[:, half:].mean())
    lopsided = abs(left - right) / max(left, right, 1e-6)
    return Task.MAMMO if dark >= 0.2 or lopsided >= 0.4 else Task.CHEST
