"""Reading and checking incoming DICOM data before anything is written.

Everything here is pure: bytes in, a parsed dataset (or ``InvalidInstanceError``) out.
Messages name attributes and UIDs, never patient data.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import (
    DataElement,
    RawDataElement,
    convert_raw_data_element,
    empty_value_for_VR,
)
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.pixels.utils import _get_jpg_parameters, get_j2k_parameters
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    RE_VALID_UID,
    UID,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from qamqor.pacs.errors import InvalidInstanceError

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
PIXEL_DATA_TAG = 0x7FE00010

_TRUNCATION_HINT = "End of file reached"

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

    __slots__ = ("_dataset", "_encoding", "_values")

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset
        self._encoding = dataset.original_character_set
        self._values: dict[int, Any] = {}

    def get(self, keyword: str) -> Any:
        """The value of ``keyword`` as ``Dataset.get`` gives it (``None`` when absent)."""
        tag = _tag(keyword)
        try:
            return self._values[tag]
        except KeyError:
            pass
        element = self._dataset.get_item(tag) if tag else None
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
        return text.strip()[:limit]

    def integer(self, keyword: str) -> int | None:
        """An integer column: ``None`` when absent, empty or not a number."""
        number = self._raw_integer(keyword)
        if number is not None:
            return number
        value = self.get(keyword)
        try:
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

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
        element = self._dataset.get_item(tag)
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
        return "" if value is None else str(value)[:324]


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

    A dataset without the Part 10 header (old "raw" files) is accepted if it reads as
    Implicit VR Little Endian; it is stored with a header added.
    """
    if len(data) < 8:
        raise InvalidInstanceError("not a DICOM file: it is empty or a few bytes long")
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = dcmread(io.BytesIO(data), force=not has_preamble)
        except InvalidDicomError:
            raise InvalidInstanceError("not a DICOM file: no 'DICM' prefix at byte 128") from None
        except (EOFError, OSError) as exc:
            raise InvalidInstanceError(f"truncated DICOM file ({type(exc).__name__})") from None
        except Exception as exc:  # pydicom raises many types on garbage
            raise InvalidInstanceError(f"unreadable DICOM data ({type(exc).__name__})") from None
    syntax_uid = str(getattr(dataset, "file_meta", {}).get("TransferSyntaxUID", ""))
    _check_complete(data, dataset, caught, syntax_uid if has_preamble else None)
    if not has_preamble:
        if "SOPInstanceUID" not in dataset:
            raise InvalidInstanceError("not a DICOM file: no 'DICM' prefix and no DICOM header")
        dataset.file_meta = _minimal_meta(dataset, ImplicitVRLittleEndian)
        buffer = io.BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True)
        data = buffer.getvalue()
    meta = getattr(dataset, "file_meta", None)
    return _check(
        data,
        dataset,
        str(meta.get("TransferSyntaxUID", "")) if meta else "",
        str(meta.get("MediaStorageSOPInstanceUID", "")) if meta else "",
    )


def parse_received(
    data: bytes, dataset_offset: int, transfer_syntax_uid: str, sop_instance_uid: str
) -> ParsedInstance:
    """Check a data set received over DIMSE, as ``parse_part10`` would check its file.

    ``data`` is the Part 10 file made of the data set as received behind a file meta header
    of ours, the data set starting at ``dataset_offset``; ``sop_instance_uid`` the one the
    request announced (in that header). Only the data set is read: the header is ours, and
    reading it back with ``dcmread`` cost more than reading the data set.
    """
    syntax = UID(transfer_syntax_uid)
    if syntax.is_transfer_syntax and syntax.is_deflated:
        return parse_part10(data)  # pydicom inflates it
    if not syntax.is_transfer_syntax:
        raise InvalidInstanceError(f"unknown transfer syntax {transfer_syntax_uid}")
    if syntax.is_little_endian:
        plain = read_plain_dataset(data, dataset_offset, implicit=syntax.is_implicit_VR)
        if plain is not None:
            return _check(data, plain, syntax, sop_instance_uid)
    buffer = io.BytesIO(data)
    buffer.seek(dataset_offset)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = read_dataset(buffer, syntax.is_implicit_VR, syntax.is_little_endian)
        except (EOFError, OSError) as exc:
            raise InvalidInstanceError(f"truncated DICOM file ({type(exc).__name__})") from None
        except Exception as exc:  # pydicom raises many types on garbage
            raise InvalidInstanceError(f"unreadable DICOM data ({type(exc).__name__})") from None
    _check_complete(data, dataset, caught, transfer_syntax_uid)
    return _check(data, dataset, syntax, sop_instance_uid)


_ELEMENT_HEADER = struct.Struct("<HH2sH")
_IMPLICIT_HEADER = struct.Struct("<HHI")
_ENCODED_VRS = {vr.value.encode("ascii"): vr.value for vr in VR}
_LONG_VR_NAMES = {str(vr) for vr in EXPLICIT_VR_LENGTH_32}


def read_plain_dataset(data: bytes, start: int, *, implicit: bool) -> Dataset | None:
    """The little endian data set at ``data[start:]`` as ``pydicom``'s ``read_dataset``
    reads it, where every element has a defined length and a known VR; else None.

    What most uncompressed images are: one pass over the element headers gives pydicom's raw
    elements (values converted later, by pydicom, when asked for), and checks that the file
    ends on an element boundary. ``read_dataset`` followed by that check (``_walk``) read the
    headers twice and cost 40 % of a C-STORE's CPU. None, and pydicom reads it, for anything
    else: undefined lengths (sequences, encapsulated pixel data), unknown VRs, an explicit VR
    data set that looks implicit or the other way round (pydicom then switches), a delimiter
    at the top level. Raises ``InvalidInstanceError`` for a data set cut short.
    """
    end = len(data)
    if end - start >= 6:  # pydicom's test of the first element (``_is_implicit_vr``)
        first, second = data[start + 4], data[start + 5]
        if implicit == (0x40 < first < 0x5B and 0x40 < second < 0x5B):
            return None
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    pos = start
    while pos < end:
        if end - pos < 8:
            raise _truncated()
        if implicit:
            group, element, length = _IMPLICIT_HEADER.unpack_from(data, pos)
            vr: str | None = None
            pos += 8
        else:
            group, element, encoded_vr, length = _ELEMENT_HEADER.unpack_from(data, pos)
            vr = _ENCODED_VRS.get(encoded_vr)
            if vr is None:
                return None
            pos += 8
            if vr in _LONG_VR_NAMES:
                if end - pos < 4:
                    raise _truncated()
                (length,) = _UINT32.unpack_from(data, pos)
                pos += 4
        if length == _UNDEFINED or group == 0xFFFE:
            return None
        if pos + length > end:
            raise _truncated()
        tag = BaseTag(group << 16 | element)
        value = data[pos : pos + length] if length else empty_value_for_VR(vr, raw=True)
        elements[tag] = RawDataElement(tag, vr, length, value, pos, implicit, True)  # type: ignore[arg-type]
        pos += length
    dataset = Dataset(elements)
    encoding: str | list[str] = default_encoding
    charset = elements.get(BaseTag(0x00080005))
    if isinstance(charset, RawDataElement):
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    dataset.set_original_encoding(implicit, True, encoding)
    return dataset


def _truncated() -> InvalidInstanceError:
    return InvalidInstanceError("truncated DICOM file: it ends before its last element")


def _check_complete(
    data: bytes, dataset: Dataset, caught: list[warnings.WarningMessage], syntax: str | None
) -> None:
    """Refuse a file that ends before its last element (``syntax`` None: no Part 10 header)."""
    if (
        any(_TRUNCATION_HINT in str(w.message) for w in caught)
        or (len(dataset) == 0 and len(data) > 132)
        or (syntax is not None and not _ends_on_element_boundary(data, syntax))
    ):
        raise _truncated()


def parse_dataset(dataset: Dataset, transfer_syntax_uid: str, encoded: bytes) -> ParsedInstance:
    """Check a dataset received over DIMSE, ``encoded`` its Part 10 bytes."""
    return _check(encoded, dataset, transfer_syntax_uid, "")


def _minimal_meta(dataset: Dataset, transfer_syntax_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _check(
    data: bytes, dataset: Dataset, transfer_syntax_uid: str, meta_sop_instance_uid: str
) -> ParsedInstance:
    if not transfer_syntax_uid:
        raise InvalidInstanceError("the file meta header has no Transfer Syntax UID")
    syntax = (
        transfer_syntax_uid if isinstance(transfer_syntax_uid, UID) else UID(transfer_syntax_uid)
    )
    if not syntax.is_transfer_syntax:
        raise InvalidInstanceError(f"unknown transfer syntax {transfer_syntax_uid}")
    values = IndexValues(dataset)
    sop_class, sop_instance, study, series = (_check_uid(values, k) for k in REQUIRED_UIDS)
    meta_sop = meta_sop_instance_uid.strip()
    if meta_sop and meta_sop != sop_instance:
        raise InvalidInstanceError(
            "Media Storage SOP Instance UID (file meta) differs from SOP Instance UID",
            dimse_status=STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    try:
        _check_pixel_data(dataset, values, syntax)
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
    )


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
    return int(value)


def check_pixel_data(dataset: Dataset, syntax: UID) -> None:
    """Refuse pixel data whose size or encoded image contradicts the header."""
    _check_pixel_data(dataset, IndexValues(dataset), syntax)


def _check_pixel_data(dataset: Dataset, values: IndexValues, syntax: UID) -> None:
    # The raw element: its bytes are all that is looked at (no VR correction needed).
    element = dataset.get_item(PIXEL_DATA_TAG)
    if element is None:
        return
    value = element.value
    if not value:  # no bytes (pydicom would give None)
        raise InvalidInstanceError("Pixel Data is empty")
    rows = _int(values, "Rows")
    columns = _int(values, "Columns")
    bits_allocated = _int(values, "BitsAllocated")
    samples = _int(values, "SamplesPerPixel", 1)
    frames = _int(values, "NumberOfFrames", 1) or 1
    if rows <= 0 or columns <= 0:
        raise InvalidInstanceError("Rows and Columns must be positive")
    photometric = values.get("PhotometricInterpretation")
    if not photometric:
        raise InvalidInstanceError("pixel data present but PhotometricInterpretation is missing")

    if not syntax.is_encapsulated:
        if str(photometric) == "YBR_FULL_422":
            samples = 2  # 4:2:2 subsampling: two values per pixel on average
        pixels = rows * columns * samples * frames
        expected = (pixels + 7) // 8 if bits_allocated == 1 else pixels * (bits_allocated // 8)
        actual = len(value)
        # Trailing padding is tolerated; missing bytes are not.
        if actual < expected:
            raise InvalidInstanceError(
                f"Pixel Data has {actual} bytes but Rows x Columns x Samples x Frames x Bits "
                f"({rows}x{columns}x{samples}x{frames}x{bits_allocated}) needs {expected}"
            )
        return

    buffer = DicomBytesIO(value)
    buffer.is_little_endian = True
    try:
        offsets = parse_basic_offsets(buffer)
        fragments = list(generate_fragments(buffer))
    except Exception:
        raise InvalidInstanceError("encapsulated Pixel Data is malformed or truncated") from None
    if not fragments:
        raise InvalidInstanceError("encapsulated Pixel Data has no fragments")
    if offsets and len(offsets) != frames:
        raise InvalidInstanceError(
            f"Basic Offset Table lists {len(offsets)} frames but NumberOfFrames is {frames}"
        )
    if len(fragments) < frames:
        raise InvalidInstanceError(
            f"encapsulated Pixel Data has {len(fragments)} fragments for {frames} frames"
        )
    _check_first_frame_geometry(bytes(fragments[0]), syntax, rows, columns)


def _check_first_frame_geometry(fragment: bytes, syntax: UID, rows: int, columns: int) -> None:
    encoded_rows = encoded_columns = None
    if syntax in JPEG2000TransferSyntaxes:
        params = get_j2k_parameters(fragment)
        if not params:
            raise InvalidInstanceError("Pixel Data is not a JPEG 2000 codestream")
        encoded_rows, encoded_columns = _j2k_size(fragment)
    elif syntax in JPEGTransferSyntaxes or syntax in JPEGLSTransferSyntaxes:
        if not fragment.startswith(b"\xff\xd8"):
            raise InvalidInstanceError("Pixel Data does not start with a JPEG SOI marker")
        params = _get_jpg_parameters(fragment)
        encoded_rows, encoded_columns = params.get("height"), params.get("width")
    elif syntax == RLELossless:
        if len(fragment) < 64:
            raise InvalidInstanceError("RLE frame is shorter than its 64-byte header")
        segments = int.from_bytes(fragment[:4], "little")
        if not 1 <= segments <= 15:
            raise InvalidInstanceError(f"RLE header declares {segments} segments (1 to 15)")
    if encoded_rows and encoded_columns and (encoded_rows, encoded_columns) != (rows, columns):
        raise InvalidInstanceError(
            f"the encoded image is {encoded_columns}x{encoded_rows} but the header says "
            f"Columns={columns}, Rows={rows}"
        )


def _j2k_size(codestream: bytes) -> tuple[int | None, int | None]:
    """(rows, columns) from a JPEG 2000 codestream's SIZ segment (pydicom does not say)."""
    if len(codestream) < 24 or codestream[:4] != b"\xff\x4f\xff\x51":
        return None, None  # a JP2 file format wrapper: not checked
    x, y, x0, y0 = (int.from_bytes(codestream[i : i + 4], "big") for i in (8, 12, 16, 20))
    return y - y0, x - x0


# pydicom reads a value cut short by the end of the file without a word; this walk of the
# element structure (no values decoded) finds such files.
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_TAG = struct.Struct("<HH")
_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<I")


def _ends_on_element_boundary(data: bytes, transfer_syntax_uid: str) -> bool:
    if len(data) < 144:
        return False
    start = _meta_end(data)
    syntax = UID(transfer_syntax_uid) if transfer_syntax_uid else None
    if syntax is None or not syntax.is_transfer_syntax or syntax.is_deflated:
        return True  # nothing to walk (deflate is checked by zlib itself)
    if not syntax.is_little_endian:
        return True
    try:
        end = _walk(data, start, len(data), explicit=not syntax.is_implicit_VR)
    except IndexError:
        return False
    return end == len(data)


def _meta_end(data: bytes) -> int:
    """Where the file meta group ends (its group length is optional in practice)."""
    pos = 132
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return pos


def _walk(data: bytes, pos: int, limit: int, *, explicit: bool, in_item: bool = False) -> int:
    """Walk elements from ``pos``; return where they end. Raises IndexError if cut short."""
    while pos < limit:
        if pos + 8 > limit:
            raise IndexError
        group, element = _TAG.unpack_from(data, pos)
        if group == 0xFFFE and element == 0xE00D:  # item delimiter
            if not in_item:
                raise IndexError
            return pos + 8
        vr = data[pos + 4 : pos + 6]
        if explicit and vr.isalpha() and vr.isupper():
            if vr in _LONG_VRS:
                if pos + 12 > limit:
                    raise IndexError
                (length,) = _UINT32.unpack_from(data, pos + 8)
                pos += 12
            else:
                (length,) = _UINT16.unpack_from(data, pos + 6)
                pos += 8
        else:
            vr = b""
            (length,) = _UINT32.unpack_from(data, pos + 4)
            pos += 8
        if length == _UNDEFINED:
            pos = _walk_sequence(data, pos, limit, explicit=explicit and vr != b"UN")
        else:
            pos += length
            if pos > limit:
                raise IndexError
    if in_item:
        raise IndexError
    return pos


def _walk_sequence(data: bytes, pos: int, limit: int, *, explicit: bool) -> int:
    """Walk items until the sequence delimiter; also fits encapsulated pixel data."""
    while True:
        if pos + 8 > limit:
            raise IndexError
        tag = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += 8
        if tag == b"\xfe\xff\xdd\xe0":  # sequence delimiter
            return pos
        if tag != b"\xfe\xff\x00\xe0":  # not an item
            raise IndexError
        if length == _UNDEFINED:
            pos = _walk(data, pos, limit, explicit=explicit, in_item=True)
        else:
            pos += length
            if pos > limit:
                raise IndexError
