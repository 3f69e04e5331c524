"""Checks of compressed frames (JPEG, JPEG-LS, JPEG 2000, RLE) before they are archived.

The decoders (pylibjpeg's libjpeg, OpenJPEG and RLE plugins) cope with damaged entropy-coded
data: they give an image, with wrong pixels where the damage is. What makes them fail is a
damaged header: a marker segment whose length runs past the frame, a frame size, component
count or precision that contradicts the data set, a Huffman table used but never defined, a
tile index past the number of tiles, an RLE segment that decodes to more bytes than the image
has (the Rust RLE decoder then panics). Those are what is checked here, marker by marker,
without decoding: a few microseconds for a JPEG 2000 frame (its tile-parts are walked by
their lengths), more for a JPEG frame (its markers are looked for through the entropy-coded
data, by a regular expression). RLE segments are decoded (about 4 ms per 1760 x 1760 16-bit
image): a segment's decoded length can only be known so.

A frame is read where it lies, across its fragments (``Stream``): frames split into 64 KiB
fragments are common, and joining them would copy every byte of the pixel data.

Each check raises ``InvalidInstanceError`` with a reason that names markers and offsets, never
a value of the data set.
"""

from __future__ import annotations

import bisect
import itertools
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qamqor.pacs.errors import InvalidInstanceError

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class FrameGeometry:
    """What the data set says each frame is."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int


def _refuse(message: str) -> InvalidInstanceError:
    return InvalidInstanceError(message)


class Stream:
    """The bytes of one frame, read across the fragments that hold it."""

    def __init__(self, parts: Sequence[memoryview | bytes]) -> None:
        self.parts = [memoryview(p) for p in parts if len(p)]
        self.starts = list(itertools.accumulate((len(p) for p in self.parts), initial=0))
        self.length = self.starts[-1]

    def take(self, pos: int, size: int, what: str = "") -> bytes:
        """``size`` bytes from ``pos``; refuses a read past the end of the frame."""
        if pos < 0 or size < 0 or pos + size > self.length:
            raise _refuse(f"{what or 'the frame'}: it ends at byte {self.length}, inside a header")
        index = bisect.bisect_right(self.starts, pos) - 1
        offset = pos - self.starts[index]
        part = self.parts[index]
        if offset + size <= len(part):
            return bytes(part[offset : offset + size])
        chunks = []
        while size > 0:
            part = self.parts[index]
            chunk = part[offset : offset + size]
            chunks.append(bytes(chunk))
            size -= len(chunk)
            index, offset = index + 1, 0
        return b"".join(chunks)

    def u16(self, pos: int, what: str = "") -> int:
        return int(_U16.unpack(self.take(pos, 2, what))[0])

    def u32(self, pos: int, what: str = "") -> int:
        return int(_U32.unpack(self.take(pos, 4, what))[0])

    def search(self, pattern: re.Pattern[bytes], pos: int) -> int | None:
        """Where ``pattern`` (two bytes long) first matches from ``pos``, across parts."""
        index = bisect.bisect_right(self.starts, pos) - 1
        offset = pos - self.starts[index]
        while index < len(self.parts):
            part = self.parts[index]
            found = pattern.search(part, offset)
            if found is not None:
                return self.starts[index] + found.start()
            # a marker split between this part and the next
            if index + 1 < len(self.parts) and part[-1] == 0xFF:
                pair = bytes((0xFF, self.parts[index + 1][0]))
                if pattern.fullmatch(pair):
                    return self.starts[index + 1] - 1
            index, offset = index + 1, 0
        return None

    def joined(self) -> bytes:
        return b"".join(bytes(p) for p in self.parts)


# JPEG 2000 (PS3.5 8.2.4, ISO/IEC 15444-1 Annex A) --------------------------------------------
_SIZ, _COD, _COC, _QCD, _QCC = 0xFF51, 0xFF52, 0xFF53, 0xFF5C, 0xFF5D
_SOT, _SOD, _EOC = 0xFF90, 0xFF93, 0xFFD9
#: Main and tile-part header markers whose segment is only walked over.
_J2K_SEGMENTS = frozenset(
    {
        0xFF50,  # CAP (HTJ2K)
        0xFF55,  # TLM
        0xFF57,  # PLM
        0xFF58,  # PLT
        0xFF59,  # CPF (HTJ2K)
        0xFF5E,  # RGN
        0xFF5F,  # POC
        0xFF60,  # PPM
        0xFF61,  # PPT
        0xFF63,  # CRG
        0xFF64,  # COM
        0xFF74,  # MCT (Part 2)
        0xFF75,  # MCC (Part 2)
        0xFF77,  # MCO (Part 2)
        0xFF78,  # CBD (Part 2)
        _QCC,
    }
)
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def check_jpeg2000(stream: Stream, geometry: FrameGeometry) -> None:
    """A JPEG 2000 (or HTJ2K) codestream: main header, then every tile-part to EOC."""
    base = 0
    if stream.length >= 12 and stream.take(0, 12) == _JP2_SIGNATURE:
        base = _jp2_codestream(stream)
    if stream.take(base, 4, "JPEG 2000") != b"\xff\x4f\xff\x51":
        raise _refuse("Pixel Data is not a JPEG 2000 codestream (no SOC and SIZ markers)")
    tiles, pos = _j2k_main_header(stream, base, geometry)
    seen: set[int] = set()
    end = stream.length
    while pos + 2 <= end:  # a codestream without EOC: the decoders take what is there
        marker = stream.u16(pos)
        if marker == _EOC:
            break
        if marker != _SOT:
            raise _refuse(
                f"JPEG 2000: marker 0x{marker:04X} at byte {pos} where SOT or EOC should be"
            )
        sot = stream.take(pos + 2, 10, "JPEG 2000 SOT")
        segment, tile, length = struct.unpack_from(">HHI", sot)
        if segment != 10:
            raise _refuse(f"JPEG 2000: the SOT segment at byte {pos} is malformed")
        if tile >= tiles:
            raise _refuse(f"JPEG 2000: tile {tile} at byte {pos}, but the image has {tiles} tiles")
        seen.add(tile)
        stop = end if length == 0 else pos + length
        if length != 0 and (length < 14 or stop > end):
            raise _refuse(f"JPEG 2000: the tile-part at byte {pos} runs past the frame")
        _j2k_tile_part_header(stream, pos + 12, stop)
        if length == 0:  # the last tile-part: to the end of the codestream
            break
        pos = stop
    if len(seen) != tiles:
        raise _refuse(f"JPEG 2000: {tiles - len(seen)} of {tiles} tiles have no data")


def _jp2_codestream(stream: Stream) -> int:
    """Where the codestream box of a JP2 file starts (some writers send JP2 files)."""
    pos = 0
    while pos + 8 <= stream.length:
        size = stream.u32(pos)
        kind = stream.take(pos + 4, 4)
        header = 8
        if size == 1:
            size = int.from_bytes(stream.take(pos + 8, 8, "JP2"), "big")
            header = 16
        elif size == 0:
            size = stream.length - pos
        if size < header or pos + size > stream.length:
            break
        if kind == b"jp2c":
            return pos + header
        pos += size
    raise _refuse("JPEG 2000: a JP2 file without a readable codestream box")


def _j2k_main_header(stream: Stream, base: int, geometry: FrameGeometry) -> tuple[int, int]:
    """SIZ, COD and QCD checked; returns (number of tiles, position of the first SOT)."""
    length = stream.u16(base + 4, "JPEG 2000 SIZ")
    siz = stream.take(base + 6, max(length - 2, 0), "JPEG 2000 SIZ")
    if length < 41:
        raise _refuse("JPEG 2000: the SIZ segment is malformed")
    x, y, x0, y0, tx, ty, tx0, ty0 = struct.unpack_from(">8I", siz, 2)
    (components,) = _U16.unpack_from(siz, 34)
    if length != 38 + 3 * components:
        raise _refuse(f"JPEG 2000: SIZ declares {components} components in {length} bytes")
    if not (x0 < x and y0 < y and tx and ty and tx0 <= x0 and ty0 <= y0):
        raise _refuse("JPEG 2000: the SIZ image and tile offsets are inconsistent")
    if tx0 + tx <= x0 or ty0 + ty <= y0:
        raise _refuse("JPEG 2000: the first tile lies outside the image")
    if (y - y0, x - x0) != (geometry.rows, geometry.columns):
        raise _refuse(
            f"the encoded image is {x - x0}x{y - y0} but the header says "
            f"Columns={geometry.columns}, Rows={geometry.rows}"
        )
    if components != geometry.samples:
        raise _refuse(
            f"the JPEG 2000 codestream has {components} components but SamplesPerPixel is "
            f"{geometry.samples}"
        )
    for index in range(components):
        depth, dx, dy = siz[36 + 3 * index : 39 + 3 * index]
        precision = (depth & 0x7F) + 1
        if precision > 38 or precision > geometry.bits_allocated:
            raise _refuse(
                f"JPEG 2000 component {index} has {precision} bits but BitsAllocated is "
                f"{geometry.bits_allocated}"
            )
        if dx != 1 or dy != 1:
            raise _refuse(f"JPEG 2000 component {index} is subsampled ({dx}x{dy})")
    tiles = -(-(x - tx0) // tx) * -(-(y - ty0) // ty)
    if tiles > 65535:
        raise _refuse(f"JPEG 2000: SIZ makes {tiles} tiles (at most 65,535)")
    pos = base + 4 + length
    levels = -1
    quantisation: list[tuple[int, bytes]] = []
    while True:
        marker = stream.u16(pos, "JPEG 2000 main header")
        if marker == _SOT:
            break
        segment = stream.u16(pos + 2, "JPEG 2000 main header")
        if segment < 2 or pos + 2 + segment > stream.length:
            raise _refuse(
                f"JPEG 2000: the segment of marker 0x{marker:04X} at byte {pos} runs past the frame"
            )
        if marker == _COD:
            levels = _j2k_coding_style(stream.take(pos + 4, segment - 2), pos, None)
        elif marker == _COC:
            _j2k_coding_style(stream.take(pos + 4, segment - 2), pos, components)
        elif marker == _QCD:
            quantisation.append((pos, stream.take(pos + 4, segment - 2)))
        elif marker not in _J2K_SEGMENTS:
            raise _refuse(
                f"JPEG 2000: unknown marker 0x{marker:04X} at byte {pos} in the main header"
            )
        pos += 2 + segment
    if levels < 0 or not quantisation:
        raise _refuse("JPEG 2000: the main header lacks its COD or QCD segment")
    for at, body in quantisation:  # COD may come after QCD: checked once levels are known
        _j2k_quantisation(body, at, levels)
    return tiles, pos


def _j2k_coding_style(body: bytes, pos: int, components: int | None) -> int:
    """COD (``components`` None) or COC: returns the number of decomposition levels."""
    if components is not None:
        index_size = 2 if components > 256 else 1
        if len(body) < index_size + 6:
            raise _refuse(f"JPEG 2000: the COC segment at byte {pos} is too short")
        index = int.from_bytes(body[:index_size], "big")
        if index >= components:
            raise _refuse(f"JPEG 2000: COC at byte {pos} names component {index}")
        style, spcod = body[index_size], index_size + 1
    else:
        if len(body) < 10:
            raise _refuse(f"JPEG 2000: the COD segment at byte {pos} is too short")
        style = body[0]
        progression, layers, transform = body[1], _U16.unpack_from(body, 2)[0], body[4]
        if progression > 4 or layers == 0 or transform > 2:
            raise _refuse(f"JPEG 2000: the COD segment at byte {pos} has invalid values")
        spcod = 5
    levels, width, height, _, wavelet = body[spcod : spcod + 5]
    if levels > 32 or width > 8 or height > 8 or width + height > 8 or wavelet > 1:
        raise _refuse(f"JPEG 2000: the coding style segment at byte {pos} has invalid values")
    precincts = levels + 1 if style & 0x01 else 0
    if len(body) != spcod + 5 + precincts:
        raise _refuse(f"JPEG 2000: the coding style segment at byte {pos} has a wrong length")
    return int(levels)


def _j2k_quantisation(body: bytes, pos: int, levels: int) -> None:
    """A QCD segment's length fits its quantisation style and the number of levels."""
    style = body[0] & 0x1F if body else 0xFF
    bands = 3 * levels + 1
    expected = {0: 1 + bands, 1: 3, 2: 1 + 2 * bands}.get(style)
    if len(body) != expected:
        raise _refuse(f"JPEG 2000: the QCD segment at byte {pos} does not fit the COD levels")


def _j2k_tile_part_header(stream: Stream, pos: int, stop: int) -> None:
    """Marker segments between SOT and SOD, each within the tile-part."""
    while True:
        if pos + 2 > stop:
            raise _refuse(f"JPEG 2000: the tile-part ending at byte {stop} has no SOD marker")
        marker = stream.u16(pos)
        if marker == _SOD:
            return
        segment = stream.u16(pos + 2, "JPEG 2000 tile-part header")
        if segment < 2 or pos + 2 + segment > stop:
            raise _refuse(
                f"JPEG 2000: the segment of marker 0x{marker:04X} at byte {pos} runs past its "
                "tile-part"
            )
        if marker not in _J2K_SEGMENTS and marker not in (_COD, _COC, _QCD):
            raise _refuse(
                f"JPEG 2000: unknown marker 0x{marker:04X} at byte {pos} in a tile-part header"
            )
        pos += 2 + segment


# JPEG and JPEG-LS (ISO/IEC 10918-1 Annex B, 14495-1 Annex C) ----------------------------------
_SOI, _EOI, _SOS, _DHT, _DQT, _DRI, _LSE = 0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0xF8
_SOF_LOSSLESS = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_SOF_DCT = frozenset({0xC0, 0xC1, 0xC2, 0xC5, 0xC6, 0xC9, 0xCA, 0xCD, 0xCE})
_SOF_LS = 0xF7
#: Segments walked over: APPn, COM, DNL, EXP, DAC.
_JPEG_SKIPPED = frozenset({*range(0xE0, 0xF0), 0xFE, 0xDC, 0xDF, 0xCC})
#: The marker after entropy-coded data: 0xFF followed by neither 0x00 (a stuffed byte), a
#: restart marker nor a fill byte. JPEG-LS stuffs a zero bit instead: 0xFF then 0x80-0xFF.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_LS_MARKER = re.compile(rb"\xff[\x80-\xfe]")


@dataclass
class _JpegState:
    components: set[int] | None = None
    tables: set[tuple[int, int]] | None = None
    lossless: bool = False
    precision: int = 0
    scans: int = 0


def check_jpeg(stream: Stream, geometry: FrameGeometry, *, ls: bool) -> None:
    """A JPEG or JPEG-LS frame: SOI, table and frame segments, every scan, EOI."""
    if stream.take(0, 2, "JPEG") != b"\xff\xd8":
        raise _refuse("Pixel Data does not start with a JPEG SOI marker")
    state = _JpegState(tables=set(), lossless=ls, precision=geometry.bits_allocated)
    end = stream.length
    pos = 2
    while True:
        if pos + 2 > end:
            raise _refuse(f"JPEG: the frame ends at byte {end} before its EOI marker")
        head = stream.take(pos, 2)
        if head[0] != 0xFF:
            raise _refuse(f"JPEG: no marker at byte {pos}")
        marker = head[1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if marker == _EOI:
            break
        if 0xD0 <= marker <= 0xD7 or marker in (0x00, 0x01, _SOI):
            raise _refuse(f"JPEG: marker 0xFF{marker:02X} at byte {pos} is out of place")
        length = stream.u16(pos + 2, "JPEG")
        if length < 2 or pos + 2 + length > end:
            raise _refuse(
                f"JPEG: the segment of marker 0xFF{marker:02X} at byte {pos} runs past the frame"
            )
        body = stream.take(pos + 4, length - 2)
        _jpeg_segment(marker, body, pos, state, geometry, ls)
        pos += 2 + length
        if marker == _SOS:
            found = stream.search(_JPEG_LS_MARKER if ls else _JPEG_MARKER, pos)
            if found is None:
                raise _refuse(f"JPEG: the scan at byte {pos} has no end (EOI missing: truncated?)")
            pos = found
    if state.components is None or state.scans == 0:
        raise _refuse("JPEG: the frame has no frame header or no scan")


def _jpeg_segment(
    marker: int, body: bytes, pos: int, state: _JpegState, geometry: FrameGeometry, ls: bool
) -> None:
    tables = state.tables
    assert tables is not None
    if marker in _SOF_LOSSLESS or marker in _SOF_DCT or marker == _SOF_LS:
        if state.components is not None:
            raise _refuse(f"JPEG: a second frame header at byte {pos}")
        if (marker == _SOF_LS) != ls:
            raise _refuse(f"JPEG: frame marker 0xFF{marker:02X} does not fit the transfer syntax")
        state.lossless = state.lossless or marker in _SOF_LOSSLESS
        state.precision = body[0] if body else 0
        state.components = _jpeg_frame_header(body, geometry, marker)
    elif marker == _DHT:
        _jpeg_huffman_tables(body, pos, tables)
    elif marker == _DQT:
        _jpeg_quantisation_tables(body, pos)
    elif marker == _DRI:
        if len(body) != 2:
            raise _refuse(f"JPEG: the DRI segment at byte {pos} is malformed")
    elif marker == _LSE and ls:
        _jpeg_ls_preset(body, state.precision)
    elif marker == _SOS:
        if state.components is None:
            raise _refuse(f"JPEG: a scan at byte {pos} before the frame header")
        _jpeg_scan_header(body, pos, state, ls)
        state.scans += 1
    elif marker not in _JPEG_SKIPPED:
        raise _refuse(f"JPEG: unexpected marker 0xFF{marker:02X} at byte {pos}")


def _jpeg_frame_header(body: bytes, geometry: FrameGeometry, marker: int) -> set[int]:
    if len(body) < 6:
        raise _refuse("JPEG: the frame header is too short")
    precision, rows, columns, count = struct.unpack_from(">BHHB", body)
    if len(body) != 6 + 3 * count or count == 0:
        raise _refuse(
            f"JPEG: the frame header declares {count} components in {len(body) + 2} bytes"
        )
    if marker == _SOF_LS or marker in _SOF_LOSSLESS:
        valid = 2 <= precision <= 16
    else:
        valid = precision in (8, 12)
    if not valid or precision > geometry.bits_allocated:
        raise _refuse(f"JPEG: a sample precision of {precision} bits is invalid here")
    if (rows, columns) != (geometry.rows, geometry.columns):
        raise _refuse(
            f"the encoded image is {columns}x{rows} but the header says "
            f"Columns={geometry.columns}, Rows={geometry.rows}"
        )
    if count != geometry.samples:
        raise _refuse(
            f"the JPEG frame has {count} components but SamplesPerPixel is {geometry.samples}"
        )
    components: set[int] = set()
    for index in range(count):
        identifier, sampling, table = body[6 + 3 * index : 9 + 3 * index]
        horizontal, vertical = sampling >> 4, sampling & 0x0F
        if identifier in components or not (1 <= horizontal <= 4 and 1 <= vertical <= 4):
            raise _refuse(f"JPEG: frame component {index} is malformed")
        if marker != _SOF_LS and table > 3:
            raise _refuse(f"JPEG: frame component {index} names quantisation table {table}")
        components.add(identifier)
    return components


def _jpeg_huffman_tables(body: bytes, pos: int, tables: set[tuple[int, int]]) -> None:
    at = 0
    while at < len(body):
        if at + 17 > len(body):
            raise _refuse(f"JPEG: the Huffman table segment at byte {pos} is cut short")
        kind, identifier = body[at] >> 4, body[at] & 0x0F
        count = sum(body[at + 1 : at + 17])
        if kind > 1 or identifier > 3 or count > 256 or at + 17 + count > len(body):
            raise _refuse(f"JPEG: the Huffman table segment at byte {pos} is malformed")
        tables.add((kind, identifier))
        at += 17 + count


def _jpeg_quantisation_tables(body: bytes, pos: int) -> None:
    at = 0
    while at < len(body):
        precision, identifier = body[at] >> 4, body[at] & 0x0F
        size = 1 + 64 * (precision + 1)
        if precision > 1 or identifier > 3 or at + size > len(body):
            raise _refuse(f"JPEG: the quantisation table segment at byte {pos} is malformed")
        at += size


def _jpeg_ls_preset(body: bytes, precision: int) -> None:
    """LSE: preset coding parameters (ID 1) within their ranges (14495-1 C.2.4.1.1)."""
    if not body or body[0] != 1:
        return  # mapping tables, extended dimensions: left to the decoder
    if len(body) != 11:
        raise _refuse("JPEG-LS: the preset parameters segment is malformed")
    maxval, t1, t2, t3, reset = struct.unpack_from(">5H", body, 1)
    largest = (1 << max(min(precision, 16), 2)) - 1
    if maxval > largest:
        raise _refuse("JPEG-LS: MAXVAL of the preset parameters is out of range")
    top = maxval or largest
    thresholds = [t for t in (t1, t2, t3) if t]
    if any(t > top for t in thresholds) or thresholds != sorted(thresholds):
        raise _refuse("JPEG-LS: the preset thresholds are out of order or range")
    if reset and not 3 <= reset <= max(255, top):
        raise _refuse("JPEG-LS: the preset RESET value is out of range")


def _jpeg_scan_header(body: bytes, pos: int, state: _JpegState, ls: bool) -> None:
    count = body[0] if body else 0
    if count == 0 or count > 4 or len(body) != 4 + 2 * count:
        raise _refuse(f"JPEG: the scan header at byte {pos} is malformed")
    components, tables, lossless = state.components or set(), state.tables or set(), state.lossless
    for index in range(count):
        identifier, selectors = body[1 + 2 * index], body[2 + 2 * index]
        if identifier not in components:
            raise _refuse(f"JPEG: the scan at byte {pos} names a component the frame lacks")
        # Baseline JPEG may leave out its tables (the decoder has the standard ones).
        if (
            not ls
            and (tables or lossless)
            and (
                (0, selectors >> 4) not in tables
                or (not lossless and (1, selectors & 0x0F) not in tables)
            )
        ):
            raise _refuse(f"JPEG: the scan at byte {pos} uses an undefined Huffman table")
    start, end, approximation = body[1 + 2 * count : 4 + 2 * count]
    if ls:
        if end > 2:  # ILV: none, line or sample interleaved
            raise _refuse(f"JPEG-LS: the scan at byte {pos} has invalid parameters")
    elif lossless:
        if not 1 <= start <= 7 or end != 0 or approximation >> 4:
            raise _refuse(f"JPEG: the lossless scan at byte {pos} has invalid parameters")
    elif start > 63 or end > 63 or start > end:
        raise _refuse(f"JPEG: the scan at byte {pos} has invalid spectral selection")


# RLE (PS3.5 Annex G) ---------------------------------------------------------------------------
def check_rle(stream: Stream, geometry: FrameGeometry) -> None:
    """An RLE frame: its header, and each segment decoded to Rows x Columns bytes."""
    if stream.length < 64:
        raise _refuse("RLE frame is shorter than its 64-byte header")
    header = struct.unpack("<16I", stream.take(0, 64))
    segments = header[0]
    expected = geometry.samples * ((geometry.bits_allocated + 7) // 8)
    if not 1 <= segments <= 15:
        raise _refuse(f"RLE header declares {segments} segments (1 to 15)")
    if segments != expected:
        raise _refuse(
            f"RLE header declares {segments} segments; SamplesPerPixel and BitsAllocated "
            f"need {expected}"
        )
    offsets = [*header[1 : 1 + segments], stream.length]
    if offsets[0] != 64 or any(a >= b for a, b in itertools.pairwise(offsets)):
        raise _refuse("RLE header's segment offsets are not ascending within the frame")
    if any(header[1 + segments :]):
        raise _refuse("RLE header has offsets for more segments than it declares")
    size = geometry.rows * geometry.columns
    decode = _rle_segment_decoder()
    for index in range(segments):
        segment = stream.take(offsets[index], offsets[index + 1] - offsets[index])
        try:
            decoded = len(decode(segment))
        except BaseException as exc:  # the Rust decoder panics (pyo3's PanicException)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise _refuse(f"RLE segment {index} cannot be decoded") from None
        # A segment may end with one byte of padding (G.3.1: segments are of even length).
        if decoded not in (size, size + 1):
            raise _refuse(
                f"RLE segment {index} decodes to {decoded} bytes, not Rows x Columns = {size}"
            )


def _rle_segment_decoder() -> Callable[[bytes], bytes | bytearray]:
    try:
        from rle.rle import decode_segment  # pylibjpeg-rle: what pydicom decodes with

        return decode_segment  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover - pylibjpeg-rle is a dependency
        from pydicom.pixels.decoders.rle import _rle_decode_segment

        return _rle_decode_segment
