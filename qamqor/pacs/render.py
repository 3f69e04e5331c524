"""Rendering frames to PNG or JPEG for people to look at (WADO-RS ``rendered``, thumbnails).

The grayscale pipeline follows PS3.4 N.2: stored values -> Modality LUT (rescale slope and
intercept, or a Modality LUT Sequence) -> VOI LUT (a window given by the caller, else the
header's VOI LUT Sequence or window, else the frame's own value range) -> 8-bit output,
inverted for MONOCHROME1. Colour images (RGB, YBR decoded to RGB, PALETTE COLOR) are scaled to
8 bits per sample. Pure functions: a dataset in, an image out; no networking.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.common import PhotometricInterpretation
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
)
from pydicom.pixels.utils import pixel_array

from qamqor.core.errors import ErrorKind, is_panic
from qamqor.pacs.errors import PacsError

#: Media types ``encode`` can write, with the Pillow format for each.
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}
DEFAULT_QUALITY = 90


class RenderError(PacsError):
    """The instance cannot be rendered (no pixel data, an unknown photometric, undecodable)."""

    kind = ErrorKind.NOT_ACCEPTABLE  # asking again renders nothing either

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


class FrameNotFoundError(RenderError):
    kind = ErrorKind.NOT_FOUND


class VoiFunction(StrEnum):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True)
class Window:
    """A window in modality units (after rescale): what a viewer's window/level sets."""

    center: float
    width: float
    function: VoiFunction = VoiFunction.LINEAR

    def __post_init__(self) -> None:
        # PS3.3 C.11.2.1.2: LINEAR needs a width of at least 1, the others a positive one.
        if self.function is VoiFunction.LINEAR and not self.width >= 1:
            raise ValueError("a linear window needs a width of at least 1")
        if not self.width > 0:
            raise ValueError("a window needs a positive width")


@dataclass(frozen=True)
class Viewport:
    """PS3.18 8.3.5.1.3: fit the (optionally cropped) image into ``width`` x ``height``."""

    width: int
    height: int
    source: tuple[int, int, int, int] | None = None
    """Region of the image to show: x, y, width, height in image pixels."""

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError("a viewport needs a positive width and height")
        if self.source is not None and (self.source[2] < 1 or self.source[3] < 1):
            raise ValueError("a viewport's source region needs a positive width and height")


def number_of_frames(dataset: Dataset) -> int:
    try:
        return max(int(dataset.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def decode_frame(dataset: Dataset, index: int = 0) -> np.ndarray:
    """The stored values of frame ``index`` (0-based); colour data comes back as RGB."""
    if "PixelData" not in dataset:
        raise RenderError("the instance has no pixel data")
    frames = number_of_frames(dataset)
    if not 0 <= index < frames:
        raise FrameNotFoundError(f"frame {index + 1} does not exist; the instance has {frames}")
    try:
        return pixel_array(dataset, index=index if frames > 1 else None)
    except BaseException as exc:
        if not isinstance(exc, Exception) and not is_panic(exc):
            raise  # an interrupt, not the decoder (a Rust decoder's panic is its error)
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "its transfer syntax")
        raise RenderError(
            f"cannot decode pixel data stored as {name} ({type(exc).__name__})"
        ) from None


def _windowing_dataset(window: Window) -> Dataset:
    """A VOI LUT module whose output range is exactly 0..255.

    pydicom scales window output to the stored value range; with 8 unsigned bits stored and
    no rescale that range is 0..255, whatever the real image's depth (its modality LUT has
    been applied already).
    """
    voi = Dataset()
    voi.PhotometricInterpretation = PhotometricInterpretation.MONOCHROME2.value
    voi.BitsStored = 8
    voi.PixelRepresentation = 0
    voi.WindowCenter = window.center
    voi.WindowWidth = window.width
    voi.VOILUTFunction = window.function.value
    return voi


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (MultiValue, list, tuple)) else value


def _header_window(dataset: Dataset) -> Window | None:
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center in (None, "") or width in (None, ""):
        return None
    try:
        function = VoiFunction(str(dataset.get("VOILUTFunction") or "LINEAR").upper())
        return Window(float(_first(center)), float(_first(width)), function)
    except (TypeError, ValueError, IndexError):
        return None  # a broken header window: fall back to the value range


def _has_voi_lut(dataset: Dataset) -> bool:
    sequence = dataset.get("VOILUTSequence")
    if not sequence:
        return False
    item = sequence[0]
    return item.get("LUTDescriptor") is not None and item.get("LUTData") is not None


def _auto_window(modality: np.ndarray, value_range: tuple[int, int] | None) -> Window:
    """A window over the frame's whole value range (after the modality LUT)."""
    span = modality if value_range is None else modality[value_range[0] : value_range[1] + 1]
    low, high = float(np.min(span)), float(np.max(span))
    return Window((low + high) / 2, max(high - low, 1e-6), VoiFunction.LINEAR_EXACT)


def grayscale_to_8bit(values: np.ndarray, dataset: Dataset, window: Window | None) -> np.ndarray:
    """Modality LUT, VOI LUT and polarity applied to one monochrome frame: uint8.

    Integer frames (nearly all) go through the pipeline once per distinct value in their
    range, as a lookup table, instead of once per pixel: a mammogram has 14 million pixels
    but a few thousand values.
    """
    if values.dtype.kind in "iu" and values.size > _LUT_MIN_PIXELS:
        low, high = int(values.min()), int(values.max())
        if values.dtype.kind == "u" and high < _LUT_MAX_ENTRIES:
            # Index with the values themselves: no offset array to build.
            domain = np.arange(0, high + 1, dtype=np.int64).astype(values.dtype)
            lut = _grayscale_pipeline(domain, dataset, window, value_range=(low, high))
            mapped: np.ndarray = lut[values]
            return mapped
        if high - low < _LUT_MAX_ENTRIES:
            domain = np.arange(low, high + 1, dtype=np.int64).astype(values.dtype)
            lut = _grayscale_pipeline(domain, dataset, window)
            shifted: np.ndarray = lut[np.subtract(values, low, dtype=np.int32)]
            return shifted
    return _grayscale_pipeline(values, dataset, window)


_LUT_MIN_PIXELS = 65_536
_LUT_MAX_ENTRIES = 1 << 20


def _grayscale_pipeline(
    values: np.ndarray,
    dataset: Dataset,
    window: Window | None,
    *,
    value_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """The pipeline itself; ``value_range``: the frame's stored values, for the auto window."""
    modality = apply_modality_lut(values, dataset)
    if window is None and _has_voi_lut(dataset):
        lut_input = np.rint(modality).astype(np.int64) if modality.dtype.kind == "f" else modality
        out = apply_voi(lut_input, dataset).astype(np.float64)
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        out *= 255.0 / float(2**bits - 1)
    else:
        chosen = window or _header_window(dataset) or _auto_window(modality, value_range)
        out = apply_windowing(modality, _windowing_dataset(chosen))
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    shape = str(dataset.get("PresentationLUTShape", "")).upper()
    if photometric == PhotometricInterpretation.MONOCHROME1 or (
        photometric == PhotometricInterpretation.MONOCHROME2 and shape == "INVERSE"
    ):
        result = 255 - result
    return result


#: Photometric Interpretations shown as grey levels (the others: colour, or a palette).
_GREYSCALE = frozenset(
    (PhotometricInterpretation.MONOCHROME1.value, PhotometricInterpretation.MONOCHROME2.value)
)


def _colour_to_8bit(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8 and bits <= 8:
        return rgb
    scale = 255.0 / float(2**bits - 1)
    return np.clip(np.rint(rgb.astype(np.float64) * scale), 0, 255).astype(np.uint8)


J2K_SYNTAXES = _J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
#: Resolution levels skipped at most (1/32 of each side).
_MAX_REDUCE = 5


def reduced_j2k_frame(dataset: Dataset, index: int, viewport: Viewport) -> np.ndarray | None:
    """A JPEG 2000 grey frame decoded at the lowest resolution level that still fills
    ``viewport`` (each level halves the sides, and costs a fraction of the full decode: a
    mammogram shown in a 500 pixel wide viewport decodes in 0.2 s instead of 1.6 s).

    None when this does not apply (another transfer syntax, colour, signed or multi-frame
    data, a viewport as large as the image, a codestream Pillow cannot reduce): the caller
    then decodes the whole frame.
    """
    syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in _J2K_SYNTAXES or "PixelData" not in dataset:
        return None
    if int(dataset.get("SamplesPerPixel") or 1) != 1 or int(
        dataset.get("PixelRepresentation") or 0
    ):
        return None
    if number_of_frames(dataset) != 1 or index != 0:
        return None
    rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
    if rows < 1 or columns < 1:
        return None
    scale = min(viewport.width / columns, viewport.height / rows)
    if scale >= 0.5:
        return None
    reduce = min(int(np.floor(np.log2(1 / scale))), _MAX_REDUCE)
    try:
        from pydicom.encaps import generate_frames
        from pydicom.pixels.utils import get_j2k_parameters

        codestream = next(generate_frames(dataset.PixelData, number_of_frames=1))
        precision = int(get_j2k_parameters(codestream).get("precision") or 0)
        if not 1 <= precision <= 16:
            return None
    except Exception:
        return None  # the full decode reports what is wrong, if anything
    values = None
    while reduce >= 1 and values is None:
        # A codestream with fewer resolution levels than asked for refuses: try fewer.
        try:
            with Image.open(io.BytesIO(codestream)) as picture:
                setattr(picture, "reduce", reduce)  # noqa: B010  (Pillow: decode fewer levels)
                picture.load()
                mode = picture.mode
                values = np.asarray(picture)
        except Exception:
            reduce -= 1
    if values is None:
        return None
    if values.ndim != 2 or values.dtype.kind != "u":
        return None
    if values.dtype == np.uint16 and precision < 16 and mode == "I;16":
        # Pillow widens samples to 16 bits; back to the stored precision.
        values = np.right_shift(values, 16 - precision)
    return values.astype(np.uint16, copy=False)


def frame_to_image(
    dataset: Dataset, values: np.ndarray, *, window: Window | None = None
) -> Image.Image:
    """An 8-bit Pillow image of one decoded frame (``decode_frame``)."""
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if samples == 1 and photometric in _GREYSCALE:
        return Image.fromarray(grayscale_to_8bit(values, dataset, window), mode="L")
    if samples == 1 and photometric == PhotometricInterpretation.PALETTE_COLOR:
        try:
            rgb = apply_color_lut(values, dataset)
        except Exception as exc:
            raise RenderError(f"the palette cannot be applied ({type(exc).__name__})") from None
        bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
        return Image.fromarray(_colour_to_8bit(rgb, 16 if bits > 8 else 8), mode="RGB")
    if samples == 3 and values.ndim == 3 and values.shape[-1] == 3:
        # pydicom hands YBR data over as RGB already.
        bits = int(dataset.get("BitsStored") or dataset.get("BitsAllocated") or 8)
        return Image.fromarray(_colour_to_8bit(values, bits), mode="RGB")
    raise RenderError(
        f"cannot render {samples} samples per pixel with photometric {photometric or 'unknown'}"
    )


def fit_viewport(image: Image.Image, viewport: Viewport) -> Image.Image:
    """Crop to the viewport's source region, then scale to fit it keeping the aspect ratio."""
    if viewport.source is not None:
        x, y, w, h = viewport.source
        box = (
            max(0, x),
            max(0, y),
            min(image.width, x + w),
            min(image.height, y + h),
        )
        if box[0] >= box[2] or box[1] >= box[3]:
            raise ValueError("the viewport's source region lies outside the image")
        image = image.crop(box)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    # reducing_gap: a box reduction by whole factors first, then Lanczos for the rest (a
    # 14-megapixel mammogram into a pane in a fraction of the time, the same look).
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode(image: Image.Image, media_type: str, *, quality: int = DEFAULT_QUALITY) -> bytes:
    """``image`` as ``image/jpeg`` or ``image/png`` bytes."""
    fmt = FORMATS.get(media_type)
    if fmt is None:
        raise RenderError(f"cannot write {media_type}; choose one of {', '.join(FORMATS)}")
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format=fmt, quality=quality)
    else:
        image.save(buffer, format=fmt, compress_level=1)  # speed over size
    return buffer.getvalue()


def render(
    dataset: Dataset,
    *,
    frame: int = 0,
    window: Window | None = None,
    viewport: Viewport | None = None,
    media_type: str = "image/jpeg",
    quality: int = DEFAULT_QUALITY,
) -> bytes:
    """Frame ``frame`` (0-based) of ``dataset`` rendered as PNG or JPEG bytes."""
    values = None
    if viewport is not None and viewport.source is None:
        values = reduced_j2k_frame(dataset, frame, viewport)
    if values is None:
        values = decode_frame(dataset, frame)
    image = frame_to_image(dataset, values, window=window)
    if viewport is not None:
        image = fit_viewport(image, viewport)
    return encode(image, media_type, quality=quality)
