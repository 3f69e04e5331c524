"""From a display-ready grey image to the network's input, and back to the image's pixels.

Training (``training/``) and inference use these same functions, so a model sees at run time
exactly what it saw while it learned.

Coordinates: pixel (x, y) is the centre of column x, row y. A model pixel ``m`` maps to the input
pixel ``(m + 0.5) / scale - 0.5``; mirroring maps ``x`` to ``width - 1 - x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from qamqor.ai.bundle import InputSpec, Normalization
from qamqor.ai.errors import UnanalysableImageError
from qamqor.core.i18n import N_, Message

MIN_SIDE = 16
MAX_INPUT_PIXELS = 60_000_000

Spacing = float | tuple[float, float] | None
"""Pixel spacing in mm: one value, or (row spacing, column spacing) as in DICOM; None if unknown."""


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """A 2-D image as float32 in 0..1.

    ``uint8`` is divided by 255; other integer types are scaled from their minimum to their
    maximum; floats must already lie in 0..1.

    Raises
    ------
    UnanalysableImageError
        Not 2-D, too small or too large, non-finite values, floats outside 0..1, or a flat image.
    """
    array = np.asarray(image)
    if array.ndim != 2:
        raise UnanalysableImageError(
            Message(N_("expected a 2-D grey image, got %(ndim)d dimensions"), ndim=array.ndim)
        )
    height, width = array.shape
    if min(height, width) < MIN_SIDE or height * width > MAX_INPUT_PIXELS:
        raise UnanalysableImageError(
            Message(
                N_("image size %(width)dx%(height)d is not supported"), width=width, height=height
            )
        )
    if array.dtype == np.uint8:
        result = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        result = array.astype(np.float32)
        low, high = float(result.min()), float(result.max())
        if high <= low:
            raise UnanalysableImageError(Message(N_("the image is flat (one grey level)")))
        result = (result - low) / (high - low)
    elif np.issubdtype(array.dtype, np.floating):
        result = array.astype(np.float32)
        if not np.isfinite(result).all():
            raise UnanalysableImageError(Message(N_("the image has non-finite pixel values")))
        if float(result.min()) < -1e-3 or float(result.max()) > 1 + 1e-3:
            raise UnanalysableImageError(Message(N_("float images must have grey levels in 0..1")))
        result = np.clip(result, 0.0, 1.0)
    else:
        raise UnanalysableImageError(
            Message(N_("unsupported pixel type %(dtype)s"), dtype=str(array.dtype))
        )
    if float(result.max()) - float(result.min()) < 1e-6:
        raise UnanalysableImageError(Message(N_("the image is flat (one grey level)")))
    return result


def model_scale(shape: tuple[int, int], spacing: Spacing, spec: InputSpec) -> tuple[float, float]:
    """(scale_y, scale_x): model pixels per input pixel along rows and columns."""
    height, width = shape
    if spacing is None:
        scale_y = scale_x = spec.reference_size / max(height, width)
    else:
        row, col = (spacing, spacing) if isinstance(spacing, float | int) else spacing
        if not (row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col)):
            raise UnanalysableImageError(Message(N_("pixel spacing must be positive")))
        scale_y, scale_x = row / spec.pixel_spacing_mm, col / spec.pixel_spacing_mm
    largest = max(height * scale_y, width * scale_x)
    if largest > spec.max_size:
        shrink = spec.max_size / largest
        scale_y, scale_x = scale_y * shrink, scale_x * shrink
    return float(scale_y), float(scale_x)


def resample(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float32 image (antialiased bilinear)."""
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    resized = pil.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def normalize(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Standardise grey levels as the model expects."""
    values = image
    if spec.normalization is Normalization.ZSCORE_FOREGROUND:
        foreground = image[image > spec.foreground_threshold]
        if foreground.size >= 0.02 * image.size:
            values = foreground
    mean = float(values.mean())
    std = float(values.std())
    return ((image - mean) / max(std, 1e-3)).astype(np.float32)


@dataclass(frozen=True)
class Prepared:
    """The network input and what is needed to map its pixels back to the input image."""

    tensor: np.ndarray
    """[1, 1, H, W] float32, padded to the spec's size multiple."""
    height: int
    """Rows of the resampled image before padding."""
    width: int
    scale_y: float
    scale_x: float
    mirrored: bool
    input_shape: tuple[int, int]

    def to_input(self, x_model: float, y_model: float) -> tuple[float, float]:
        """A model-pixel position as a position in the caller's image."""
        x = (x_model + 0.5) / self.scale_x - 0.5
        y = (y_model + 0.5) / self.scale_y - 0.5
        height, width = self.input_shape
        if self.mirrored:
            x = width - 1 - x
        return float(np.clip(x, 0, width - 1)), float(np.clip(y, 0, height - 1))

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """A position in the caller's image as a model-pixel position."""
        if self.mirrored:
            x = self.input_shape[1] - 1 - x
        return (x + 0.5) * self.scale_x - 0.5, (y + 0.5) * self.scale_y - 0.5


def prepare(
    image: np.ndarray, *, spec: InputSpec, spacing: Spacing = None, mirror: bool = False
) -> Prepared:
    """Turn a display-ready image into the network's input.

    Parameters
    ----------
    image:
        2-D grey image, brighter = denser (see :func:`to_unit_float` for accepted types).
    spec:
        The bundle's input specification.
    spacing:
        Pixel spacing in mm, if known.
    mirror:
        Mirror left-right first (a left breast, for a model whose canonical side is right).
    """
    unit = to_unit_float(image)
    if mirror:
        unit = unit[:, ::-1]
    scale_y, scale_x = model_scale(unit.shape, spacing, spec)
    height = max(MIN_SIDE, round(unit.shape[0] * scale_y))
    width = max(MIN_SIDE, round(unit.shape[1] * scale_x))
    scale_y, scale_x = height / unit.shape[0], width / unit.shape[1]
    resized = normalize(resample(unit, height, width), spec)
    multiple = spec.size_multiple
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    padded = np.pad(resized, ((0, pad_h), (0, pad_w)), mode="edge") if pad_h or pad_w else resized
    return Prepared(
        tensor=np.ascontiguousarray(padded[None, None], dtype=np.float32),
        height=height,
        width=width,
        scale_y=scale_y,
        scale_x=scale_x,
        mirrored=mirror,
        input_shape=(int(unit.shape[0]), int(unit.shape[1])),
    )
