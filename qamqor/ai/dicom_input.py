"""From a DICOM radiograph or mammogram to the display-ready image the analysers take.

What a radiologist's viewer does before anyone looks at the image, in the same order:

1. decode the pixels (any transfer syntax pydicom can decode: JPEG 2000, JPEG-LS, RLE...);
2. the Modality LUT (``RescaleSlope`` / ``RescaleIntercept`` or a Modality LUT Sequence):
   :func:`pydicom.pixels.apply_modality_lut`;
3. the VOI LUT: the first window (``WindowCenter`` / ``WindowWidth`` with its
   ``VOILUTFunction``) or the first VOI LUT Sequence item, :func:`pydicom.pixels.apply_voi_lut`.
   Where the header has neither, a window from the 0.5th to the 99.5th percentile of the pixels
   (padding left out) stands in for the one a viewer's auto-window would pick;
4. grey levels scaled to 0..1 over the VOI output range, and MONOCHROME1 (white = low values)
   inverted so that brighter always means denser;
5. pixels equal to ``PixelPaddingValue`` (outside the collimated field) set to 0.

The image keeps its stored orientation: findings come back in the stored pixels' coordinates,
which is what the SR's SCOORDs and every viewer use. What the analyser needs to orient a
mammogram is passed alongside: the laterality and the chest-wall side.

Pixel spacing (mm per pixel, row and column), in order of preference:

- ``PixelSpacing`` when it holds two positive numbers (calibrated at the patient, as some CR
  and DX systems write it; the NEMA chest CR has ``0\\0`` there, which means unknown);
- ``ImagerPixelSpacing`` (at the detector) divided by ``EstimatedRadiographicMagnification
  Factor`` when that is present (usual in mammography: about 1.08 at the breast);
- ``ImagerPixelSpacing`` as is;
- otherwise unknown: the analyser then scales the image's longer side to the training field of
  view (documented in :mod:`qamqor.ai.preprocess`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from qamqor.ai.errors import UnanalysableImageError
from qamqor.core.errors import is_panic
from qamqor.core.i18n import N_, Message

logger = logging.getLogger(__name__)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
#: Where a mammogram's chest wall is, from the row direction of Patient Orientation (0020,0020):
#: columns increasing towards the anterior (the nipple) put the chest wall at the left edge.
_CHEST_WALL_BY_ROW_DIRECTION = {"A": "left", "P": "right"}


@dataclass(frozen=True)
class DicomImage:
    """A display-ready image and what the analysers need to know about it."""

    pixels: np.ndarray
    """float32 grey levels in 0..1, brighter = denser, in the stored orientation."""
    spacing: tuple[float, float] | None
    """(row, column) spacing in mm, or None when unknown."""
    laterality: str | None
    """``"L"`` or ``"R"`` (Image Laterality, else the series' Laterality), None if not stated."""
    chest_wall: str | None
    """``"left"`` / ``"right"``: the image edge of a mammogram's chest wall, when known."""
    spacing_source: str
    """Which attribute the spacing came from (``PixelSpacing``, ``ImagerPixelSpacing``...)."""

    @property
    def shape(self) -> tuple[int, int]:
        rows, columns = self.pixels.shape
        return int(rows), int(columns)


def _two_positive(value: Any) -> tuple[float, float] | None:
    try:
        row, column = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if row > 0 and column > 0 and np.isfinite(row) and np.isfinite(column):
        return row, column
    return None


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm at the patient where it can be known, and its source."""
    calibrated = _two_positive(ds.get("PixelSpacing"))
    if calibrated is not None:
        return calibrated, "PixelSpacing"
    imager = _two_positive(ds.get("ImagerPixelSpacing"))
    if imager is not None:
        try:
            magnification = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
        except (TypeError, ValueError):
            magnification = 0.0
        if 1.0 <= magnification <= 5.0:
            return (
                (imager[0] / magnification, imager[1] / magnification),
                "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
            )
        return imager, "ImagerPixelSpacing"
    return None, "unknown"


def laterality_of(ds: Dataset) -> str | None:
    """``L`` or ``R`` from Image Laterality (instance), else Laterality (series); else None.

    ``B`` (both) and ``U`` (unpaired) say nothing about one breast and count as not stated.
    """
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword) or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


def chest_wall_from_header(ds: Dataset) -> str | None:
    """The chest wall's image edge from Patient Orientation's row direction, if stated."""
    orientation = ds.get("PatientOrientation")
    if not orientation:
        return None
    values = [orientation] if isinstance(orientation, str) else list(orientation)
    row_direction = str(values[0]).strip().upper()[:1] if values else ""
    return _CHEST_WALL_BY_ROW_DIRECTION.get(row_direction)


def chest_wall_from_image(pixels: np.ndarray) -> str:
    """Where a mammogram's chest wall is, from the image: the breast spreads from the chest
    wall, so the half of the image holding more tissue (brighter on average) is that side."""
    half = pixels.shape[1] // 2
    left = float(pixels[:, :half].mean())
    right = float(pixels[:, half:].mean())
    return "left" if left >= right else "right"


def _voi_output_range(ds: Dataset, bits_stored: int, signed: bool) -> tuple[float, float]:
    """The range of values :func:`apply_voi_lut` maps a window to (as pydicom computes it)."""
    if "ModalityLUTSequence" in ds:
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if signed:
        low, high = -(2.0 ** (bits_stored - 1)), 2.0 ** (bits_stored - 1) - 1
    else:
        low, high = 0.0, 2.0**bits_stored - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def _has_window(ds: Dataset) -> bool:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return False
    try:
        first_width = float(width[0] if not isinstance(width, str | int | float) else width)
    except (TypeError, ValueError, IndexError):
        return False
    return first_width >= 1


def decode_pixels(ds: Dataset) -> np.ndarray:
    """The stored pixel values of a single-frame grey image.

    Raises
    ------
    UnanalysableImageError
        No pixels, colour, several frames, or pixels that cannot be decoded.
    """
    if "PixelData" not in ds:
        raise UnanalysableImageError(Message(N_("the instance has no pixel data")))
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if photometric not in MONOCHROME:
        raise UnanalysableImageError(
            Message(
                N_(
                    "unsupported photometric interpretation %(photometric)s: "
                    "only MONOCHROME1 and MONOCHROME2 images are analysed"
                ),
                photometric=photometric or "-",
            )
        )
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise UnanalysableImageError(
            Message(N_("only grey images (one sample per pixel) are analysed"))
        )
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames != 1:
        raise UnanalysableImageError(
            Message(N_("multi-frame images (%(frames)d frames) are not analysed"), frames=frames)
        )
    try:
        array = np.asarray(ds.pixel_array)
    except BaseException as exc:  # decoders raise many types; the message may quote the dataset
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise  # an interrupt, not the decoder (a Rust decoder's panic is its error)
        raise UnanalysableImageError(
            Message(N_("the pixel data cannot be decoded (%(error)s)"), error=type(exc).__name__)
        ) from None
    if array.ndim != 2:
        raise UnanalysableImageError(
            Message(N_("expected one grey frame, got shape %(shape)s"), shape=str(array.shape))
        )
    return array


def display_pixels(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Modality LUT, VOI LUT, scaling to 0..1 and MONOCHROME1 inversion (module docstring)."""
    bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    padding_value = ds.get("PixelPaddingValue")
    padding = (
        stored == int(padding_value)
        if isinstance(padding_value, int)
        else np.zeros(stored.shape, dtype=bool)
    )
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if "VOILUTSequence" in ds or _has_window(ds):
        windowed = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
        if "VOILUTSequence" in ds and not _has_window(ds):
            descriptor = ds.VOILUTSequence[0].LUTDescriptor
            low, high = 0.0, float(2 ** int(descriptor[2]) - 1)
            # Some writers state 16 bits for an 8- or 12-bit table: use what the table holds.
            table_max = float(np.max(np.asarray(ds.VOILUTSequence[0].LUTData)))
            if 0 < table_max < high:
                high = float(2 ** int(np.ceil(np.log2(table_max + 1))) - 1)
        else:
            low, high = _voi_output_range(ds, bits_stored, signed)
        unit = (windowed - low) / max(high - low, 1e-9)
    else:
        inside = values[~padding] if padding.any() else values
        if inside.size == 0:
            raise UnanalysableImageError(Message(N_("the image holds padding only")))
        low, high = (float(v) for v in np.percentile(inside, [0.5, 99.5]))
        if high <= low:
            raise UnanalysableImageError(Message(N_("the image is flat (one grey level)")))
        unit = (values - low) / (high - low)
    unit = np.clip(unit, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        unit = 1.0 - unit
    if padding.any():
        unit[padding] = 0.0
    if not np.isfinite(unit).all():
        raise UnanalysableImageError(Message(N_("the image has non-finite pixel values")))
    if float(unit.max()) - float(unit.min()) < 1e-6:
        raise UnanalysableImageError(
            Message(N_("the image is flat (one grey level) after windowing"))
        )
    return unit.astype(np.float32)


def load_dicom_image(ds: Dataset) -> DicomImage:
    """Decode and prepare a DICOM image for the analysers (see the module docstring).

    Raises
    ------
    UnanalysableImageError
        The pixels cannot be decoded or displayed (the message says why, with no patient data).
    """
    stored = decode_pixels(ds)
    try:
        pixels = display_pixels(ds, stored)
    except UnanalysableImageError:
        raise
    except Exception as exc:  # a malformed LUT or window: pydicom raises various types
        raise UnanalysableImageError(
            Message(
                N_("the grey-level tables (Modality/VOI LUT) cannot be applied (%(error)s)"),
                error=type(exc).__name__,
            )
        ) from None
    spacing, source = pixel_spacing(ds)
    return DicomImage(
        pixels=pixels,
        spacing=spacing,
        laterality=laterality_of(ds),
        chest_wall=chest_wall_from_header(ds),
        spacing_source=source,
    )
