"""Changing an instance's transfer syntax for a peer that cannot take the stored one.

Decoding uses pydicom's pixel back-ends (pylibjpeg: JPEG, JPEG-LS, JPEG 2000; RLE; deflate).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

from pydicom import Dataset, dcmread
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from qamqor.core.errors import ErrorKind
from qamqor.pacs.errors import PacsError

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
NATIVE_SYNTAXES = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)


class TranscodeError(PacsError):
    """The stored pixel data cannot be decoded (an unsupported or corrupt encoding)."""

    kind = ErrorKind.INVALID  # asking again decodes nothing either

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


def read_dataset(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data))


def choose_syntax(stored: str, accepted: Iterable[str]) -> str | None:
    """The syntax to send in: the stored one if accepted, else an uncompressed one accepted.

    Native (uncompressed) encodings convert into one another freely; compressed ones are
    decoded. ``None``: nothing the peer accepts can carry this instance.
    """
    accepted = [str(a) for a in accepted]
    if stored in accepted:
        return stored
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        if syntax in accepted:
            return str(syntax)
    if UID(stored) in NATIVE_SYNTAXES and ExplicitVRBigEndian in accepted:
        return str(ExplicitVRBigEndian)
    return None


def to_syntax(dataset: Dataset, syntax: str) -> Dataset:
    """``dataset`` ready to be sent in ``syntax`` (decompressed in place where needed).

    Only decompression is supported: from any stored encoding to native little endian.
    """
    current = UID(str(dataset.file_meta.TransferSyntaxUID))
    target = UID(syntax)
    if current == target:
        return dataset
    if current.is_compressed and "PixelData" in dataset:
        try:
            # Same instance in another encoding: it keeps its SOP Instance UID.
            dataset.decompress(generate_instance_uid=False)
        except Exception as exc:
            raise TranscodeError(
                f"cannot decode pixel data stored as {current.name} ({type(exc).__name__})"
            ) from None
    if target.is_compressed:
        raise TranscodeError(f"re-encoding to {target.name} is not supported")
    dataset.file_meta.TransferSyntaxUID = target
    return dataset
