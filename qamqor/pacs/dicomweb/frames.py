"""Frames and transfer syntaxes as WADO-RS hands them out (PS3.18 8.7.3).

Pure DICOM logic, no HTTP: which syntax an ``Accept`` header allows for an instance, the
media type of a compressed frame, a frame's stored bytes, and a frame decoded to native
little-endian bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import get_expected_length, pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from qamqor.pacs.dicomweb.multipart import MediaRange
from qamqor.pacs.render import number_of_frames
from qamqor.pacs.transcode import TranscodeError

EXPLICIT_LE = str(ExplicitVRLittleEndian)
OCTET_STREAM = "application/octet-stream"
DICOM = "application/dicom"

#: Syntaxes a stored instance can be converted into on the way out (decompression only).
OUTPUT_SYNTAXES = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)})

#: Media types of compressed pixel data, PS3.18 Table 8.7.3-2 (aliases: Table 8.7.3-5).
_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


def frame_media_type(syntax: str) -> str:
    """The media type of one frame encoded in ``syntax`` (native data: octet-stream)."""
    return _MEDIA_TYPES.get(syntax, OCTET_STREAM)


def is_native(syntax: str) -> bool:
    uid = UID(syntax)
    return uid.is_transfer_syntax and not uid.is_encapsulated


# Choosing -----------------------------------------------------------------------------------
def choose_instance_syntax(accepted: list[MediaRange], stored: str) -> str | None:
    """The syntax to send a whole instance (``application/dicom``) in, or ``None``.

    ``transfer-syntax=*`` and the stored syntax itself mean "as stored"; no syntax means
    Explicit VR Little Endian (PS3.18 8.7.3.5.2), reached by decompressing if need be.
    """
    for accept in accepted:
        if not (accept.is_wildcard or accept.matches(DICOM)):
            continue
        syntax = accept.transfer_syntax
        if syntax == "*" or syntax == stored:
            return stored
        if syntax is None:
            return EXPLICIT_LE
        if syntax in OUTPUT_SYNTAXES:
            return syntax
    return None


@dataclass(frozen=True)
class FrameChoice:
    """How frames go out: as stored (``stored`` true) or decoded to native bytes."""

    stored: bool
    part_type: str
    """Content-Type of each part, with its ``transfer-syntax`` parameter."""
    media_type: str
    """The ``type`` parameter of the multipart response."""


def choose_frame_encoding(accepted: list[MediaRange], stored: str) -> FrameChoice | None:
    """How to send frames of an instance stored in ``stored``, or ``None`` (406)."""
    native = is_native(stored)
    stored_type = frame_media_type(stored)

    def as_stored(media_type: str) -> FrameChoice:
        syntax = EXPLICIT_LE if native else stored
        return FrameChoice(True, f"{media_type}; transfer-syntax={syntax}", media_type)

    decoded = FrameChoice(False, f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_LE}", OCTET_STREAM)
    for accept in accepted:
        syntax = accept.transfer_syntax
        media_type = _ALIASES.get(accept.media_type, accept.media_type)
        if accept.is_wildcard:
            if syntax == "*" or (syntax == stored and not native):
                return as_stored(stored_type)
            if syntax in (None, EXPLICIT_LE):
                return decoded
        elif media_type == OCTET_STREAM:
            if syntax in (None, EXPLICIT_LE) or (native and syntax in ("*", stored)):
                return decoded
            if syntax in ("*", stored):
                # What OHIF asks for: the stored bitstream, labelled with its syntax.
                return as_stored(OCTET_STREAM)
        elif (
            not native and media_type in (stored_type, "image/*") and syntax in (None, "*", stored)
        ):
            return as_stored(stored_type)
    return None


# Frames -------------------------------------------------------------------------------------
def stored_frame(dataset: Dataset, index: int) -> bytes:
    """Frame ``index`` (0-based) exactly as stored: a compressed bitstream or native bytes."""
    syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
    if not syntax.is_encapsulated:
        return native_frame(dataset, index)
    try:
        return get_frame(
            dataset.PixelData,
            index,
            number_of_frames=number_of_frames(dataset),
            extended_offsets=_extended_offsets(dataset),
        )
    except Exception as exc:
        raise TranscodeError(f"frame {index + 1} cannot be read ({type(exc).__name__})") from None


def _extended_offsets(dataset: Dataset) -> tuple[bytes, bytes] | None:
    offsets = dataset.get("ExtendedOffsetTable")
    lengths = dataset.get("ExtendedOffsetTableLengths")
    if offsets and lengths:
        return bytes(offsets), bytes(lengths)
    return None


def native_frame(dataset: Dataset, index: int) -> bytes:
    """Frame ``index`` (0-based) as uncompressed little-endian bytes (Explicit VR LE layout).

    Native little-endian data is sliced without decoding; anything else is decoded (colour
    JPEG comes out as RGB, as in a decompressed instance).
    """
    frames = number_of_frames(dataset)
    syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
    bits = int(dataset.get("BitsAllocated") or 8)
    little_native = syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or (
        syntax == DeflatedExplicitVRLittleEndian
    )
    try:
        if little_native and bits % 8 == 0:
            per_frame = get_expected_length(dataset, "bytes") // frames
            return bytes(dataset.PixelData[index * per_frame : (index + 1) * per_frame])
        if little_native and frames == 1:
            return bytes(dataset.PixelData)
        values = pixel_array(dataset, index=index if frames > 1 else None)
    except Exception as exc:
        name = syntax.name if syntax.is_transfer_syntax else syntax
        raise TranscodeError(
            f"cannot decode pixel data stored as {name} ({type(exc).__name__})"
        ) from None
    if bits == 1:
        return pack_bits(values.ravel())
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes()
