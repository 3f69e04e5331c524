"""Reading and checking incoming DICOM data before anything is written.

Everything here is pure: bytes in, a parsed dataset (or ``InvalidInstanceError``) out.
Messages name attributes and UIDs, never patient data.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, private_dictionary_VR, tag_for_keyword
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    RE_VALID_UID,
    UID,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    MPEGTransferSyntaxes,
    RLELossless,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from qamqor.pacs.codestreams import FrameGeometry, Stream, check_jpeg, check_jpeg2000, check_rle
from qamqor.pacs.errors import InvalidInstanceError

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
PIXEL_DATA_TAG = 0x7FE00010

# Status codes from PS3.4 Annex B.2.3
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900


class IndexValues:
    """The top-level attribute values of a data set, each converted once, when first asked.

    ``Dataset.get`` builds a validated ``DataElement`` each time (about 12 µs on the
    development machine) and the store path asked for some 60 values per instance; here
    pydicom converts each raw element once (``convert_raw_data_element``, with the data set's
    character set) and the value is kept. The rules of each kind of value (``text``,
    ``integer``, ``person_name``) are those of the index columns.
    """

    __slots__ = ("_dataset", "_elements", "_encoding", "_values")

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset
        # The elements by tag, looked up directly: ``Dataset.get_item`` makes a ``Tag`` of
        # its key first, a third of the cost of the look-ups a store makes.
        self._elements: Any = dataset._dict
        self._encoding = dataset.original_character_set
        self._values: dict[int, Any] = {}

    def get(self, keyword: str) -> Any:
        """The value of ``keyword`` as ``Dataset.get`` gives it (``None`` when absent)."""
        tag = _tag(keyword)
        try:
            return self._values[tag]
        except KeyError:
            pass
        element = self._elements.get(tag) if tag else None
        if element is None:
            value = None
        elif isinstance(element, RawDataElement):
            value = convert_raw_data_element(
                element, encoding=self._encoding, ds=self._dataset
            ).value
        else:
            value = element.value
        self._values[tag] = value
        return value

    def text(self, keyword: str, limit: int) -> str:
        """A text column: multiple values joined by backslashes, stripped, cut to ``limit``."""
        value = self.get(keyword)
        if value is None:
            return ""
        # pydicom gives several values as a MultiValue (neither list nor tuple)
        if isinstance(value, (list, tuple, MultiValue)):
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        if "\x00" in text:  # an index column holds no NUL (PostgreSQL's text cannot)
            text = text.replace("\x00", "")
        return text.strip()[:limit]

    def integer(self, keyword: str) -> int | None:
        """An integer column: ``None`` when absent, empty, not a number or out of the
        columns' range (32-bit signed)."""
        number = self._raw_integer(keyword)
        if number is None:
            value = self.get(keyword)
            try:
                number = int(value) if value not in (None, "") else None
            except (TypeError, ValueError, OverflowError):
                return None
        if number is not None and not -_INT32 <= number < _INT32:
            return None
        return number

    def _raw_integer(self, keyword: str) -> int | None:
        """A single binary (US, SS, UL, SL) or IS value read from its bytes, or None.

        pydicom's conversion of an IS value (``IS.__new__``: float strings, exponents,
        range checks) was a sixth of a C-STORE's CPU for the seven numbers every store
        reads; a plain single value needs none of it. Anything else (several values,
        padding pydicom would refuse, ...) goes the ``get`` way.
        """
        element = self._unconverted(keyword)
        value = element.value if element is not None else None
        if element is None or not value:
            return None
        vr = element.VR or _dictionary_vr(element.tag)
        binary = _BINARY_INTEGERS.get(vr)
        if binary is not None:
            little, big = binary
            if len(value) != little.size:
                return None
            return int((little if element.is_little_endian else big).unpack(value)[0])
        if vr == "IS":
            text = value.strip(b" \x00")
            if text.isdigit():  # digits only: no sign, no decimal point, no backslash
                return int(text)
        return None

    def _unconverted(self, keyword: str) -> RawDataElement | None:
        """The raw element of ``keyword`` with a value, if nothing converted it yet."""
        tag = _tag(keyword)
        if not tag or tag in self._values:
            return None
        element = self._elements.get(tag)
        if not isinstance(element, RawDataElement) or not element.value:
            return None
        return element

    def raw_uid(self, keyword: str) -> str | None:
        """A UID read from its bytes: ASCII without padding (NUL or space), one value, or
        None (absent, converted already, anything else: ``get`` decides).

        pydicom's conversion of a UI value (character set, value hooks, ``UID``) was a sixth
        of the check of a received data set for the four UIDs every store reads.
        """
        element = self._unconverted(keyword)
        if element is None:
            return None
        value = element.value
        if not value or not value.isascii() or b"\\" in value:
            return None
        return value.decode("ascii").strip("\x00 ")

    def person_name(self, keyword: str) -> str:
        value = self.get(keyword)
        text = "" if value is None else str(value)
        if "\x00" in text:
            text = text.replace("\x00", "")
        return text[:324]


_INT32 = 1 << 31
_TAGS: dict[str, int] = {}
_BINARY_INTEGERS = {
    vr: (struct.Struct("<" + code), struct.Struct(">" + code))
    for vr, code in (("US", "H"), ("SS", "h"), ("UL", "I"), ("SL", "i"))
}


def _tag(keyword: str) -> int:
    """The tag of ``keyword`` (0 if there is none), looked up once."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = tag_for_keyword(keyword) or 0
    return tag


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


@dataclass(frozen=True)
class ParsedInstance:
    """A checked instance: its Part 10 bytes (to store) and its header (to index)."""

    data: bytes
    dataset: Dataset
    transfer_syntax_uid: str
    values: IndexValues
    """The header's values, converted once (the index reads them from here)."""
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    has_pixel_data: bool = False
    """Pixel Data (or Float / Double Float Pixel Data) at the top level of the data set."""

    @property
    def is_image(self) -> bool:
        """Image-bearing: pixels, or an image SOP class. Only these make a study "not stable
        yet" again; reports, presentation states, key objects and encapsulated documents added
        to a study (often by Qamqor itself) do not."""
        return self.has_pixel_data or _is_image_class(self.sop_class_uid)


def _check_uid(values: IndexValues, keyword: str) -> str:
    raw = values.raw_uid(keyword)
    if raw and len(raw) <= 64 and RE_VALID_UID.match(raw):
        return raw  # what the conversion below gives for a valid UID, without its cost
    value = values.get(keyword)
    if value is None or str(value).strip() == "":
        raise InvalidInstanceError(
            f"required attribute {keyword} is missing",
            dimse_status=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if isinstance(value, UID) and value == value.strip():
        uid = value  # as pydicom converted it: a second UID() would only validate it again
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            uid = UID(str(value).strip())
    if not uid.is_valid:
        raise InvalidInstanceError(
            f"{keyword} is not a valid UID (digits and dots, at most 64 characters)",
            dimse_status=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    return str(uid)


def parse_part10(data: bytes) -> ParsedInstance:
    """Parse a DICOM file (PS3.10) and check it can be archived.

    One pass over the file: the file meta header, then every element of the data set, items
    and fragments included, each checked as it is read (``DatasetReader``). A data set
    without the Part 10 header (old "raw" files) is accepted if it reads as Implicit VR Little
    Endian; it is stored with a header added. A refusal carries the SOP Class and Instance
    UIDs of the file meta header, when they look like UIDs (the STOW-RS response names them).
    """
    if len(data) < 8:
        raise InvalidInstanceError("not a DICOM file: it is empty or a few bytes long")
    if len(data) >= 132 and data[128:132] == b"DICM":
        meta = read_file_meta(data, 132)
        try:
            if not meta.transfer_syntax_uid:
                raise InvalidInstanceError("the file meta header has no Transfer Syntax UID")
            dataset, layout = read_dataset_checked(data, meta.end, meta.transfer_syntax_uid)
            return _check(data, dataset, meta.transfer_syntax_uid, meta.sop_instance_uid, layout)
        except InvalidInstanceError as exc:
            raise exc.naming(meta.sop_class_uid, meta.sop_instance_uid) from None
    return _parse_raw(data)


def _parse_raw(data: bytes) -> ParsedInstance:
    """A data set with no preamble: Implicit VR Little Endian (or its own file meta group)."""
    start, syntax = 0, str(ImplicitVRLittleEndian)
    if data[:2] == b"\x02\x00":  # a file meta group without the preamble
        meta = read_file_meta(data, 0)
        start, syntax = meta.end, meta.transfer_syntax_uid or syntax
    elif data[:2] != b"\x08\x00":  # a data set starts with its group 0008 elements
        raise InvalidInstanceError("not a DICOM file: no 'DICM' prefix and no DICOM header")
    dataset, _ = read_dataset_checked(data, start, syntax, share_pixels=False)
    if _tag("SOPInstanceUID") not in dataset._dict:
        raise InvalidInstanceError("not a DICOM file: no 'DICM' prefix and no DICOM header")
    dataset.file_meta = _minimal_meta(dataset, syntax)
    buffer = io.BytesIO()
    try:
        dcmwrite(buffer, dataset, enforce_file_format=True)
    except Exception as exc:  # a value pydicom reads but cannot write back
        raise InvalidInstanceError(
            f"the data set cannot be given a file meta header ({type(exc).__name__})"
        ) from None
    return parse_part10(buffer.getvalue())


def parse_received(
    data: bytes, dataset_offset: int, transfer_syntax_uid: str, sop_instance_uid: str
) -> ParsedInstance:
    """Check a data set received over DIMSE, as ``parse_part10`` would check its file.

    ``data`` is the Part 10 file made of the data set as received behind a file meta header
    of ours, the data set starting at ``dataset_offset``; ``sop_instance_uid`` the one the
    request announced (in that header). Only the data set is read: the header is ours.
    """
    dataset, layout = read_dataset_checked(data, dataset_offset, transfer_syntax_uid)
    return _check(data, dataset, transfer_syntax_uid, sop_instance_uid, layout)


@dataclass(frozen=True)
class FileMeta:
    """What the archive needs of a file meta header, and where the data set starts."""

    end: int
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def read_file_meta(data: bytes, start: int) -> FileMeta:
    """The group 0002 elements from ``start`` (explicit VR little endian; an implicit one is
    tolerated, as pydicom does); refuses a group that runs past the end of the file."""
    pos, end = start, len(data)
    values: dict[int, bytes] = {}
    while end - pos >= 8 and data[pos : pos + 2] == b"\x02\x00":
        header = pos
        (element,) = _UINT16.unpack_from(data, pos + 2)
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if end - pos < 12:
                break
            (length,) = _UINT32.unpack_from(data, pos + 8)
            pos += 12
        elif vr in _ENCODED_VRS:
            (length,) = _UINT16.unpack_from(data, pos + 6)
            pos += 8
        else:
            (length,) = _UINT32.unpack_from(data, pos + 4)
            pos += 8
        if length > end - pos:
            raise InvalidInstanceError(
                f"truncated DICOM file: file meta element (0002,{element:04X}) at byte "
                f"{header} runs past the end"
            )
        values[element] = data[pos : pos + length]
        pos += length

    def uid(element: int) -> str:
        raw = values.get(element, b"")
        text = raw.decode("ascii", "replace").strip("\x00 ")
        return text if len(text) <= 64 and RE_VALID_UID.match(text) else ""

    syntax = values.get(0x0010, b"").decode("ascii", "replace").strip("\x00 ")
    return FileMeta(pos, syntax, uid(0x0002), uid(0x0003))


def _minimal_meta(dataset: Dataset, transfer_syntax_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _check(
    data: bytes,
    dataset: Dataset,
    transfer_syntax_uid: str,
    meta_sop_instance_uid: str,
    layout: PixelDataLayout | None,
) -> ParsedInstance:
    syntax = (
        transfer_syntax_uid if isinstance(transfer_syntax_uid, UID) else UID(transfer_syntax_uid)
    )
    values = IndexValues(dataset)
    sop_class, sop_instance, study, series = (_check_uid(values, k) for k in REQUIRED_UIDS)
    meta_sop = meta_sop_instance_uid.strip()
    if meta_sop and meta_sop != sop_instance:
        raise InvalidInstanceError(
            "Media Storage SOP Instance UID (file meta) differs from SOP Instance UID",
            dimse_status=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    # An image whose Image Pixel module is there but its pixels are not: cut short right
    # before them (its header alone reads well).
    elements = dataset._dict
    if (
        layout is None
        and _ROWS in elements
        and not _FLOAT_PIXELS & elements.keys()
        and _is_image_class(sop_class)
    ):
        raise _mismatch(f"no Pixel Data, which an image ({sop_class}) with Rows must have")
    try:
        _check_pixel_data(values, syntax, layout, data)
    except InvalidInstanceError:
        raise
    except Exception as exc:  # any decoding trouble in the header is bad input
        raise InvalidInstanceError(f"pixel data cannot be checked ({type(exc).__name__})") from None
    return ParsedInstance(
        data=data,
        dataset=dataset,
        transfer_syntax_uid=str(syntax),
        values=values,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_instance_uid=study,
        series_instance_uid=series,
        has_pixel_data=layout is not None or bool(_ANY_PIXELS & elements.keys()),
    )


# One pass over the data set ------------------------------------------------------------------
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_CHARSET = 0x00080005
#: Sequences nested deeper than this are refused (and Python's stack stays safe).
MAX_DEPTH = 32
#: A deflated data set may inflate to this many bytes at most.
MAX_INFLATED_BYTES = 4 << 30
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<I")
_ENCODED_VRS = {vr.value.encode("ascii"): vr.value for vr in VR}
_LONG_VR_NAMES = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_LONG_VRS = frozenset(vr.encode("ascii") for vr in _LONG_VR_NAMES)
_STRUCTS = {
    little: (
        struct.Struct(f"{order}HH2sH"),
        struct.Struct(f"{order}HHI"),
        struct.Struct(f"{order}I"),
    )
    for little, order in ((True, "<"), (False, ">"))
}
#: What is checked of a value, by VR: its length's unit (binary numbers: pydicom refuses a
#: value of another length), or how it is read (numbers as text, sequences, UN).
_VALUE_CHECKS: dict[str, int | str] = {
    "US": 2,
    "SS": 2,
    "UL": 4,
    "SL": 4,
    "FL": 4,
    "FD": 8,
    "SV": 8,
    "UV": 8,
    "AT": 4,
    "US or SS": 2,
    "US or OW": 2,
    "US or SS or OW": 2,
    "DS": "DS",
    "IS": "IS",
    "SQ": "SQ",
    "UN": "UN",
}
#: Each VR as encoded: (its name, whether its length has 4 bytes, what is checked of it).
_EXPLICIT_VRS = {
    encoded: (name, name in _LONG_VR_NAMES, _VALUE_CHECKS.get(name))
    for encoded, name in _ENCODED_VRS.items()
}
# A decimal string and an integer string as PS3.5 6.2 defines them (spaces around allowed),
# several values separated by backslashes; an empty value between them is allowed. A decimal
# with an exponent is left to pydicom's conversion (it may be too large for a float).
_DS_ONE = rb" *(?:[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))? *"
_IS_ONE = rb" *(?:[+-]?[0-9]+)? *"
_DS_TEXT = re.compile(_DS_ONE + rb"(?:\\" + _DS_ONE + rb")*")
_IS_TEXT = re.compile(_IS_ONE + rb"(?:\\" + _IS_ONE + rb")*")
_PHOTOMETRIC = frozenset(
    (
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_ICT",
        "YBR_RCT",
        "HSV",
        "ARGB",
        "CMYK",
        "YBR_PARTIAL_422",
        "YBR_PARTIAL_420",
    )
)


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _truncated(tag: int | None = None, pos: int | None = None) -> InvalidInstanceError:
    where = f": element {_name(tag)} at byte {pos} runs past the end" if tag is not None else ""
    if tag is None and pos is not None:
        where = f": it ends inside an element header at byte {pos}"
    return InvalidInstanceError(f"truncated DICOM file{where}")


@dataclass
class PixelDataLayout:
    """Where the top-level Pixel Data is, as read (``fragments`` for encapsulated data)."""

    encapsulated: bool
    offsets: list[int]
    """The Basic Offset Table."""
    fragments: list[tuple[int, int]]
    """(position of the value, length) of each fragment, in the data read."""
    first_item: int
    """Position of the first fragment's item tag (the Basic Offset Table's origin)."""


class DatasetReader:
    """One pass over an encoded data set: pydicom's raw elements for the top level, and every
    element, item and fragment checked on the way (PS3.5 7.1 to 7.5, A.4).

    A data set is refused (``InvalidInstanceError``, with the tag and byte offset and never a
    value) when an element runs past the end or past its item, when its VR is unknown, when
    tags are not in ascending order (a repeated element, elements out of order), when it holds
    command (0000) or file meta (0002) elements, when an undefined length is used where none
    may be, when an item or sequence delimiter is missing, misplaced or has a length, when a
    binary number's length is not a multiple of its size or a number written as text (DS, IS)
    is not one, or when the fragments of encapsulated pixel data are not an offset table,
    fragments and a sequence delimiter. Values are not converted: those a check needs (text
    numbers that are not plain, names of private creators) are converted by pydicom.
    """

    def __init__(self, data: bytes, *, implicit: bool, little: bool, encapsulated: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.little = little
        self.encapsulated = encapsulated
        self.encoding: str | list[str] = default_encoding
        self.pixel: PixelDataLayout | None = None
        self.origin = 0
        """Where the data set starts: byte offsets in refusals are counted from there."""
        self.share_pixels = True
        """Pixel Data's value a view of ``data`` (no copy), not bytes of its own."""
        self._headers = _STRUCTS[little]

    # The top level: raw elements as pydicom's reader gives them -----------------------------
    def read(self, start: int) -> Dataset:
        self.origin = start
        data, little, implicit = self.data, self.little, self.implicit
        end = len(data)
        if end - start >= 8 and implicit and data[start + 4 : start + 6] in _ENCODED_VRS:
            raise InvalidInstanceError(
                "the data set is encoded with explicit VRs but its transfer syntax is "
                "Implicit VR Little Endian"
            )
        explicit_header, implicit_header, uint32 = self._headers
        elements: dict[BaseTag, DataElement | RawDataElement] = {}
        creators: dict[int, bytes] = {}
        checks = _VALUE_CHECKS
        explicit_vrs = _EXPLICIT_VRS
        share = self.share_pixels
        previous = -1
        pos = start
        while pos < end:
            if end - pos < 8:
                raise _truncated(pos=pos - self.origin)
            header = pos
            if implicit:
                group, number, length = implicit_header.unpack_from(data, pos)
                vr: str | None = None
                pos += 8
                tag = group << 16 | number
                kind = checks.get(self._vr(tag, creators))
            else:
                group, number, encoded, length = explicit_header.unpack_from(data, pos)
                tag = group << 16 | number
                known = explicit_vrs.get(encoded)
                if known is None:
                    if tag <= previous or group < 0x0008 or group == 0xFFFE:
                        raise _misplaced(tag, previous, header - self.origin, top=True)
                    raise _unknown_vr(tag, header - self.origin)
                vr, long, kind = known
                pos += 8
                if long:
                    if end - pos < 4:
                        raise _truncated(pos=header - self.origin)
                    (length,) = uint32.unpack_from(data, pos)
                    pos += 4
            if tag <= previous or group < 0x0008 or group == 0xFFFE:
                raise _misplaced(tag, previous, header - self.origin, top=True)
            previous = tag
            key = BaseTag(tag)
            if length == _UNDEFINED:
                value_end, stop = self._undefined(tag, vr, pos, end, 1, implicit, creators, header)
                # Encapsulated pixel data is not copied: it is checked through ``pixel``.
                value: Any = (
                    memoryview(data)[pos:value_end]
                    if share and tag == PIXEL_DATA_TAG
                    else data[pos:value_end]
                )
                elements[key] = RawDataElement(key, vr, length, value, pos, implicit, little)
                pos = stop
                continue
            if length > end - pos:
                raise _truncated(tag, header - self.origin)
            if kind is not None:
                if kind.__class__ is int:
                    if length % kind:
                        raise _not_whole(tag, length, kind)
                else:
                    self._check_value(tag, vr, kind, pos, length, 1, implicit, creators)
            if not length:
                value = empty_value_for_VR(vr, raw=True)
                if tag == PIXEL_DATA_TAG:
                    self.pixel = PixelDataLayout(False, [], [(pos, 0)], pos)
            elif tag < PIXEL_DATA_TAG:
                value = data[pos : pos + length]
                if group & 1 and 0x0010 <= number <= 0x00FF:
                    creators[tag] = value
            elif tag == PIXEL_DATA_TAG:
                value = memoryview(data)[pos : pos + length] if share else data[pos : pos + length]
                self.pixel = PixelDataLayout(False, [], [(pos, length)], pos)
            else:
                value = data[pos : pos + length]
            element = RawDataElement(key, vr, length, value, pos, implicit, little)
            elements[key] = element
            pos += length
            if tag == _CHARSET:
                self._set_encoding(element)
        dataset = Dataset(elements)
        dataset.set_original_encoding(implicit, little, self.encoding)
        return dataset

    def _set_encoding(self, element: RawDataElement) -> None:
        try:
            self.encoding = convert_encodings(convert_raw_data_element(element).value)
        except Exception:  # an unknown character set: pydicom reads with its default
            self.encoding = default_encoding

    # Items' data sets: checked, nothing kept ------------------------------------------------------
    def _item_dataset(
        self, pos: int, end: int, depth: int, implicit: bool, *, delimited: bool
    ) -> int:
        """The elements of an item from ``pos``: to ``end`` exactly, or (``delimited``) to
        its item delimiter, whose end is returned."""
        data = self.data
        explicit_header, implicit_header, uint32 = self._headers
        creators: dict[int, bytes] = {}
        checks = _VALUE_CHECKS
        previous = -1
        while pos < end:
            if end - pos < 8:
                raise _truncated(pos=pos - self.origin)
            header = pos
            if implicit:
                group, number, length = implicit_header.unpack_from(data, pos)
                vr: str | None = None
                pos += 8
            else:
                group, number, encoded, length = explicit_header.unpack_from(data, pos)
                vr = _ENCODED_VRS.get(encoded)
                pos += 8
                if vr in _LONG_VR_NAMES:
                    if end - pos < 4:
                        raise _truncated(pos=header - self.origin)
                    (length,) = uint32.unpack_from(data, pos)
                    pos += 4
            tag = group << 16 | number
            if tag == _ITEM_END:
                if not delimited or length != 0:
                    raise _misplaced(tag, previous, header - self.origin, top=False)
                return header + 8
            if tag <= previous or group < 0x0008 or group == 0xFFFE:
                raise _misplaced(tag, previous, header - self.origin, top=False)
            previous = tag
            if vr is None and not implicit:
                raise _unknown_vr(tag, header - self.origin)
            if length == _UNDEFINED:
                _, pos = self._undefined(tag, vr, pos, end, depth + 1, implicit, creators, header)
                continue
            if length > end - pos:
                raise _truncated(tag, header - self.origin)
            kind = checks.get(vr or self._vr(tag, creators))
            if kind is not None:
                self._check_value(tag, vr, kind, pos, length, depth + 1, implicit, creators)
            if group & 1 and 0x0010 <= number <= 0x00FF and length:
                creators[tag] = data[pos : pos + length]
            pos += length
        if delimited:
            raise InvalidInstanceError(
                "an item of undefined length has no item delimiter (truncated?)"
            )
        return pos

    # Sequences and fragments ------------------------------------------------------------------
    def _undefined(
        self,
        tag: int,
        vr: str | None,
        pos: int,
        end: int,
        depth: int,
        implicit: bool,
        creators: dict[int, bytes],
        header: int,
    ) -> tuple[int, int]:
        """An element of undefined length from its value at ``pos``: (where its value ends,
        where the element ends, its sequence delimiter included)."""
        if tag == PIXEL_DATA_TAG and depth == 1:
            if not self.encapsulated:
                raise InvalidInstanceError(
                    "Pixel Data has an undefined length, which only a compressed "
                    "(encapsulated) transfer syntax allows"
                )
            if vr not in ("OB", "OW"):
                raise InvalidInstanceError("encapsulated Pixel Data must have the VR OB")
            stop = self._fragments(pos, end)
            return stop - 8, stop
        resolved = vr or self._vr(tag, creators)
        if resolved == "UN" and vr is None and self._peek_tag(pos, end) == _ITEM:
            resolved = "SQ"  # an unknown element of items: a sequence, as pydicom reads it
        if resolved not in ("SQ", "UN"):
            at = header - self.origin
            raise InvalidInstanceError(
                f"element {_name(tag)} at byte {at} has an undefined length, which only "
                "sequences and encapsulated Pixel Data may have"
            )
        # UN of undefined length: a sequence in Implicit VR Little Endian (PS3.5 6.2.2).
        stop = self._sequence(tag, pos, end, depth, implicit or vr == "UN", defined=False)
        return stop - 8, stop

    def _peek_tag(self, pos: int, end: int) -> int:
        if end - pos < 4:
            return -1
        group, number = struct.unpack_from("<HH" if self.little else ">HH", self.data, pos)
        return int(group << 16 | number)

    def _sequence(
        self, tag: int, pos: int, end: int, depth: int, implicit: bool, *, defined: bool
    ) -> int:
        """The items of a sequence from ``pos``: to ``end`` exactly (``defined``), or to the
        sequence delimiter, whose end is returned."""
        if depth > MAX_DEPTH:
            raise InvalidInstanceError(f"sequences nested more than {MAX_DEPTH} levels deep")
        data = self.data
        item_header = self._headers[1]
        while pos < end:
            if end - pos < 8:
                raise _truncated(pos=pos - self.origin)
            group, number, length = item_header.unpack_from(data, pos)
            item = group << 16 | number
            header = pos
            pos += 8
            if item == _SEQUENCE_END and not defined:
                if length != 0:
                    at = header - self.origin
                    raise InvalidInstanceError(
                        f"the sequence delimiter of {_name(tag)} at byte {at} has a length"
                    )
                return pos
            if item != _ITEM:
                at = header - self.origin
                raise InvalidInstanceError(
                    f"{_name(item)} at byte {at} where an item of sequence {_name(tag)} "
                    "or its delimiter should be"
                )
            if length == _UNDEFINED:
                pos = self._item_dataset(pos, end, depth, implicit, delimited=True)
                continue
            if length > end - pos:
                at = header - self.origin
                raise InvalidInstanceError(
                    f"an item of sequence {_name(tag)} at byte {at} runs past the end of "
                    "its sequence (truncated?)"
                )
            self._item_dataset(pos, pos + length, depth, implicit, delimited=False)
            pos += length
        if not defined:
            raise InvalidInstanceError(
                f"sequence {_name(tag)} of undefined length has no sequence delimiter (truncated?)"
            )
        return pos

    def _fragments(self, pos: int, end: int) -> int:
        """Encapsulated Pixel Data (PS3.5 A.4): the Basic Offset Table item, one or more
        fragment items of defined length, the sequence delimiter; returns where it ends."""
        data = self.data
        item_header = self._headers[1]
        offsets: list[int] | None = None
        fragments: list[tuple[int, int]] = []
        first_item = 0
        while True:
            if end - pos < 8:
                raise InvalidInstanceError(
                    "encapsulated Pixel Data has no sequence delimiter (truncated?)"
                )
            group, number, length = item_header.unpack_from(data, pos)
            item = group << 16 | number
            header = pos
            pos += 8
            if item == _SEQUENCE_END:
                if length != 0:
                    at = header - self.origin
                    raise InvalidInstanceError(
                        f"the sequence delimiter of Pixel Data at byte {at} has a length"
                    )
                break
            if item != _ITEM:
                at = header - self.origin
                raise InvalidInstanceError(
                    f"{_name(item)} at byte {at} where a Pixel Data item or the sequence "
                    "delimiter should be"
                )
            if length == _UNDEFINED or length > end - pos:
                at = header - self.origin
                raise InvalidInstanceError(
                    f"the Pixel Data item at byte {at} runs past the end (truncated?)"
                )
            if offsets is None:
                if length % 4:
                    raise InvalidInstanceError(
                        "the Basic Offset Table's length is not a multiple of 4"
                    )
                offsets = list(struct.unpack_from(f"<{length // 4}I", data, pos))
                first_item = pos + length
            else:
                fragments.append((pos, length))
            pos += length
        if not fragments:
            raise InvalidInstanceError("encapsulated Pixel Data has no fragments")
        self.pixel = PixelDataLayout(True, offsets or [], fragments, first_item)
        return pos

    # Values ---------------------------------------------------------------------------------
    def _check_value(
        self,
        tag: int,
        vr: str | None,
        kind: int | str,
        pos: int,
        length: int,
        depth: int,
        implicit: bool,
        creators: dict[int, bytes],
    ) -> None:
        if kind.__class__ is int:
            if length % kind:
                raise _not_whole(tag, length, kind)
            return
        data = self.data
        if kind == "SQ":
            # UN holding a sequence: its items are Implicit VR Little Endian (PS3.5 6.2.2).
            self._sequence(tag, pos, pos + length, depth, implicit or vr == "UN", defined=True)
        elif kind == "UN":
            resolved = self._un_vr(tag, length, creators) if vr == "UN" else "UN"
            check = _VALUE_CHECKS.get(resolved)
            if check is not None and check != "UN":
                self._check_value(tag, vr, check, pos, length, depth, implicit, creators)
        elif kind == "DS":
            value = data[pos : pos + length]
            if not _DS_TEXT.fullmatch(value):
                self._convert(tag, "DS", value)
        elif kind == "IS" and not _IS_TEXT.fullmatch(data[pos : pos + length]):
            self._convert(tag, "IS", data[pos : pos + length])

    def _convert(self, tag: int, vr: str, value: bytes) -> None:
        """A number as text that is not plain: what pydicom makes of it must be numbers."""
        raw = RawDataElement(BaseTag(tag), vr, len(value), value, 0, self.implicit, self.little)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                converted = convert_raw_data_element(raw, encoding=self.encoding).value
        except Exception:
            converted = None
        items = converted if isinstance(converted, MultiValue) else [converted]
        if not all(
            item == ""
            or (
                isinstance(item, int | float)
                and not isinstance(item, bool)
                and math.isfinite(float(item))
            )
            for item in items
        ):
            raise InvalidInstanceError(f"element {_name(tag)} ({vr}) is not a number")

    # VRs of implicit and UN elements ------------------------------------------------------------
    def _vr(self, tag: int, creators: dict[int, bytes]) -> str:
        """The VR pydicom gives an element of an implicit VR data set."""
        vr = _PUBLIC_VRS.get(tag)
        if vr is not None:
            return vr
        if tag >> 16 & 1:
            return self._private_vr(tag, creators)
        vr = _dictionary_vr(tag) or ("UL" if tag & 0xFFFF == 0 else "UN")
        if len(_PUBLIC_VRS) < 100_000:
            _PUBLIC_VRS[tag] = vr
        return vr

    def _un_vr(self, tag: int, length: int, creators: dict[int, bytes]) -> str:
        """The VR pydicom reads an explicit UN element with (``replace_un_with_known_vr``)."""
        if tag >> 16 & 1:
            return self._private_vr(tag, creators)
        if length >= 0xFFFF:
            return "UN"
        return _dictionary_vr(tag) or "UN"

    def _private_vr(self, tag: int, creators: dict[int, bytes]) -> str:
        number = tag & 0xFFFF
        if 0x0010 <= number <= 0x00FF:
            return "LO"  # a private creator
        raw = creators.get(tag & 0xFFFF0000 | number >> 8) if number & 0xFF00 else None
        if not raw:
            return "UN"
        key = (raw, tag & 0xFFFF00FF)
        vr = _PRIVATE_VRS.get(key)
        if vr is None:
            vr = _private_dictionary_vr(tag, raw, self.encoding)
            if len(_PRIVATE_VRS) < 100_000:
                _PRIVATE_VRS[key] = vr
        return vr


def _misplaced(tag: int, previous: int, pos: int, *, top: bool) -> InvalidInstanceError:
    group = tag >> 16
    if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
        where = "in the data set" if top else "inside an item"
        return InvalidInstanceError(f"a delimiter {_name(tag)} at byte {pos} {where}")
    if group in (0x0000, 0x0002):
        kind = "a command" if group == 0 else "a file meta"
        return InvalidInstanceError(
            f"{kind} element {_name(tag)} at byte {pos}: group {group:04X} does not "
            "belong in a data set"
        )
    if group < 0x0008 or group == 0xFFFE:
        return InvalidInstanceError(f"element {_name(tag)} at byte {pos} is not allowed here")
    if tag == previous:
        return InvalidInstanceError(f"element {_name(tag)} at byte {pos} is repeated")
    return InvalidInstanceError(
        f"element {_name(tag)} at byte {pos} follows {_name(previous)}: elements must be in "
        "ascending order"
    )


def _not_whole(tag: int, length: int, size: int) -> InvalidInstanceError:
    return InvalidInstanceError(
        f"element {_name(tag)} has {length} bytes: not a whole number of {size}-byte values"
    )


def _unknown_vr(tag: int, pos: int) -> InvalidInstanceError:
    return InvalidInstanceError(
        f"element {_name(tag)} at byte {pos} has an unknown VR (value representation)"
    )


_PUBLIC_VRS: dict[int, str] = {}
_PRIVATE_VRS: dict[tuple[bytes, int], str] = {}


def _private_dictionary_vr(tag: int, creator: bytes, encoding: str | list[str]) -> str:
    """The VR of a private element from pydicom's private dictionary, or UN (as pydicom)."""
    creator_tag = BaseTag(tag & 0xFFFF0000 | (tag & 0xFF00) >> 8)
    raw = RawDataElement(creator_tag, "LO", len(creator), creator, 0, False, True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            name = convert_raw_data_element(raw, encoding=encoding).value
        return str(private_dictionary_VR(BaseTag(tag), name)) if isinstance(name, str) else "UN"
    except (KeyError, TypeError, ValueError):  # not in the private dictionary: UN
        return "UN"


def read_dataset_checked(
    data: bytes, start: int, transfer_syntax_uid: str, *, share_pixels: bool = True
) -> tuple[Dataset, PixelDataLayout | None]:
    """The data set at ``data[start:]`` in ``transfer_syntax_uid``, read and checked in one
    pass (``DatasetReader``), and where its pixel data is; a deflated one is inflated first
    (to ``MAX_INFLATED_BYTES`` at most)."""
    syntax = (
        transfer_syntax_uid if isinstance(transfer_syntax_uid, UID) else UID(transfer_syntax_uid)
    )
    if not syntax.is_transfer_syntax:
        raise InvalidInstanceError(f"unknown transfer syntax {transfer_syntax_uid}")
    if syntax.is_deflated:
        data, start = _inflated(data, start), 0
    reader = DatasetReader(
        data,
        implicit=syntax.is_implicit_VR,
        little=syntax.is_little_endian,
        encapsulated=syntax.is_encapsulated,
    )
    reader.share_pixels = share_pixels
    dataset = reader.read(start)
    if not dataset._dict:
        raise InvalidInstanceError("the data set is empty")
    return dataset, reader.pixel


def _inflated(data: bytes, start: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data[start:], MAX_INFLATED_BYTES)
    except zlib.error:
        raise InvalidInstanceError("the deflated data set cannot be inflated") from None
    if inflater.unconsumed_tail:
        raise InvalidInstanceError(
            f"the deflated data set inflates to more than {MAX_INFLATED_BYTES} bytes"
        )
    if not inflater.eof:
        raise InvalidInstanceError("truncated DICOM file: the deflated data set is cut short")
    return inflated


# Pixel data ----------------------------------------------------------------------------------
_FLOAT_PIXELS = frozenset((0x7FE00008, 0x7FE00009))  # Float and Double Float Pixel Data
_ANY_PIXELS = _FLOAT_PIXELS | {PIXEL_DATA_TAG}
_ROWS = 0x00280010
_IMAGE_CLASSES: dict[str, bool] = {}


def _is_image_class(sop_class_uid: str) -> bool:
    """Whether pydicom names the SOP class an "... Image Storage" (its IOD has pixels)."""
    known = _IMAGE_CLASSES.get(sop_class_uid)
    if known is None:
        known = "Image Storage" in UID(sop_class_uid).name
        if len(_IMAGE_CLASSES) < 10_000:
            _IMAGE_CLASSES[sop_class_uid] = known
    return known


def _int(values: IndexValues, keyword: str, default: int | None = None) -> int:
    number = values.integer(keyword)
    if number is not None:
        return number
    value = values.get(keyword)
    if value is None or value == "":
        if default is None:
            raise InvalidInstanceError(
                f"pixel data present but {keyword} is missing",
                dimse_status=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
            )
        return default
    if isinstance(value, MultiValue):
        value = value[0] if value else default
    return int(value)


def _mismatch(message: str) -> InvalidInstanceError:
    return InvalidInstanceError(message, dimse_status=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS)


def _image_geometry(values: IndexValues) -> tuple[FrameGeometry, int, str]:
    """The Image Pixel module's values as pydicom's decoders require them (their
    ``_validate_options``): (geometry of a frame, number of frames, photometric)."""
    rows = _int(values, "Rows")
    columns = _int(values, "Columns")
    bits_allocated = _int(values, "BitsAllocated")
    bits_stored = _int(values, "BitsStored")
    samples = _int(values, "SamplesPerPixel", 1)
    representation = _int(values, "PixelRepresentation")
    frames = _int(values, "NumberOfFrames", 1) or 1
    photometric = values.text("PhotometricInterpretation", 64)
    if not photometric:
        raise _mismatch("pixel data present but PhotometricInterpretation is missing")
    if rows <= 0 or columns <= 0:
        raise _mismatch("Rows and Columns must be positive")
    if rows > 65535 or columns > 65535:
        raise _mismatch("Rows and Columns must be at most 65535")
    if not (bits_allocated == 1 or (bits_allocated % 8 == 0 and 8 <= bits_allocated <= 64)):
        raise _mismatch(f"BitsAllocated {bits_allocated} is not 1 or a multiple of 8 up to 64")
    if not 1 <= bits_stored <= bits_allocated:
        raise _mismatch(f"BitsStored {bits_stored} is not between 1 and BitsAllocated")
    if representation not in (0, 1):
        raise _mismatch(f"PixelRepresentation {representation} is not 0 or 1")
    if samples not in (1, 3):
        raise _mismatch(f"SamplesPerPixel {samples} is not 1 or 3")
    if samples == 3 and _int(values, "PlanarConfiguration") not in (0, 1):
        raise _mismatch("PlanarConfiguration is not 0 or 1")
    if frames < 1:
        raise _mismatch(f"NumberOfFrames {frames} is not positive")
    if photometric not in _PHOTOMETRIC:
        raise _mismatch("PhotometricInterpretation is not one of the defined terms")
    return FrameGeometry(rows, columns, samples, bits_allocated, bits_stored), frames, photometric


def _check_pixel_data(
    values: IndexValues, syntax: UID, layout: PixelDataLayout | None, data: bytes
) -> None:
    """Refuse pixel data whose size or encoded frames contradict the header."""
    if layout is None:
        return
    if not layout.fragments or (not layout.encapsulated and layout.fragments[0][1] == 0):
        raise InvalidInstanceError("Pixel Data is empty")
    geometry, frames, photometric = _image_geometry(values)
    if not syntax.is_encapsulated:
        if layout.encapsulated:
            raise InvalidInstanceError("Pixel Data is encapsulated in a native transfer syntax")
        samples = 2 if photometric == "YBR_FULL_422" else geometry.samples  # 4:2:2
        pixels = geometry.rows * geometry.columns * samples * frames
        bits = geometry.bits_allocated
        expected = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
        actual = layout.fragments[0][1]
        # The value's length is even: one byte of padding after an odd number of bytes.
        if actual != expected and not (expected % 2 and actual == expected + 1):
            raise InvalidInstanceError(
                f"Pixel Data has {actual} bytes but Rows x Columns x Samples x Frames x Bits "
                f"({geometry.rows}x{geometry.columns}x{samples}x{frames}x{bits}) needs "
                f"{expected}"
            )
        return
    if not layout.encapsulated:
        raise InvalidInstanceError(
            "Pixel Data of a compressed transfer syntax must be encapsulated (undefined length)"
        )
    if syntax in MPEGTransferSyntaxes:
        return  # a video stream: its frames are not fragments
    for index, frame in enumerate(_frames(values, layout, frames, data)):
        try:
            _check_frame(frame, syntax, geometry)
        except InvalidInstanceError as exc:
            if frames > 1:
                exc.message = f"frame {index + 1}: {exc.message}"
                exc.args = (exc.message,)
            raise


def _frames(values: IndexValues, layout: PixelDataLayout, frames: int, data: bytes) -> list[Stream]:
    """Each frame's bytes, as pydicom's ``generate_frames`` finds them."""
    view = memoryview(data)
    fragments = layout.fragments
    offsets = layout.offsets
    extended = values.get("ExtendedOffsetTable")
    if extended is not None:
        lengths = values.get("ExtendedOffsetTableLengths")
        if offsets:
            raise InvalidInstanceError("both a Basic and an Extended Offset Table are present")
        if not isinstance(extended, bytes) or not isinstance(lengths, bytes):
            raise InvalidInstanceError("the Extended Offset Table has no lengths")
        starts = struct.unpack(f"<{len(extended) // 8}Q", extended[: len(extended) // 8 * 8])
        sizes = struct.unpack(f"<{len(lengths) // 8}Q", lengths[: len(lengths) // 8 * 8])
        if len(starts) != frames or len(sizes) != frames:
            raise InvalidInstanceError(
                f"the Extended Offset Table lists {len(starts)} frames but NumberOfFrames is "
                f"{frames}"
            )
        items = {pos - 8 - layout.first_item: (pos, length) for pos, length in fragments}
        result: list[Stream] = []
        for start, size in zip(starts, sizes, strict=True):
            fragment = items.get(start)
            if fragment is None or size > fragment[1]:
                raise InvalidInstanceError("an Extended Offset Table entry is not a fragment")
            result.append(Stream([view[fragment[0] : fragment[0] + size]]))
        return result
    if offsets:
        if len(offsets) != frames:
            raise InvalidInstanceError(
                f"Basic Offset Table lists {len(offsets)} frames but NumberOfFrames is {frames}"
            )
        positions = [pos - 8 - layout.first_item for pos, _ in fragments]
        index = {position: number for number, position in enumerate(positions)}
        if offsets[0] != 0 or any(o not in index for o in offsets):
            raise InvalidInstanceError("a Basic Offset Table entry is not the start of a fragment")
        bounds = [index[o] for o in offsets]
        if bounds != sorted(set(bounds)):
            raise InvalidInstanceError("the Basic Offset Table's entries are not ascending")
        groups = [
            fragments[a:b] for a, b in zip(bounds, [*bounds[1:], len(fragments)], strict=True)
        ]
    elif frames == 1:
        groups = [fragments]
    elif len(fragments) == frames:
        groups = [[fragment] for fragment in fragments]
    else:
        raise InvalidInstanceError(
            f"encapsulated Pixel Data has {len(fragments)} fragments for {frames} frames "
            "and no offset table to tell them apart"
        )
    return [Stream([view[pos : pos + length] for pos, length in group]) for group in groups]


def _check_frame(frame: Stream, syntax: UID, geometry: FrameGeometry) -> None:
    if not frame.length:
        raise InvalidInstanceError("a frame of the encapsulated Pixel Data is empty")
    if syntax in JPEG2000TransferSyntaxes:
        check_jpeg2000(frame, geometry)
    elif syntax in JPEGLSTransferSyntaxes:
        check_jpeg(frame, geometry, ls=True)
    elif syntax in JPEGTransferSyntaxes:
        check_jpeg(frame, geometry, ls=False)
    elif syntax == RLELossless:
        check_rle(frame, geometry)


def _meta_end(data: bytes) -> int:
    """Where the file meta group of a Part 10 file ends."""
    return read_file_meta(data, 132).end
