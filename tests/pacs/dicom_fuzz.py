"""Mutations of real DICOM files for the fuzz tests (``test_fuzz.py``), and the check that
what the archive stored reads back in full.

The mutations are those that break readers in practice: byte flips, truncation anywhere,
length fields set to huge or odd values, VRs no reader knows, sequences whose item or
sequence delimiters are broken, pixel data cut short or lengthened, blocks of zeros,
elements duplicated or out of order. They are drawn from ``random.Random(seed)``: the same
seed gives the same mutations on every machine.
"""

from __future__ import annotations

import io
import random
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

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
UNKNOWN_VRS = [b"ZZ", b"XX", b"QQ", b"\x00\x00", b"  ", b"A1", b"ob", b"\xff\xff"]


@dataclass(frozen=True)
class Element:
    """Where an element (or item, delimiter, fragment) of an encoded data set is."""

    offset: int
    """Its first byte (the tag)."""
    tag: int
    vr_offset: int | None
    length_offset: int
    length_size: int
    value_offset: int
    length: int
    depth: int
    """0: the top level data set; items and their contents are deeper."""
    kind: str
    """``element``, ``item``, ``item-end``, ``sequence-end`` or ``fragment``."""
    end: int
    """Where it ends (its delimiter included, for an undefined length)."""


def meta_end(data: bytes) -> int:
    pos = 132
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return pos


def element_map(data: bytes, start: int, *, implicit: bool) -> list[Element]:
    """Every element, item, delimiter and fragment of a well-formed data set, in file order."""
    found: list[Element] = []

    def walk(pos: int, end: int, depth: int, explicit: bool, in_item: bool) -> int:
        while pos < end:
            group, number = struct.unpack_from("<HH", data, pos)
            tag = group << 16 | number
            if tag == 0xFFFEE00D:
                found.append(
                    Element(pos, tag, None, pos + 4, 4, pos + 8, 0, depth, "item-end", pos + 8)
                )
                return pos + 8
            vr = data[pos + 4 : pos + 6]
            index = len(found)
            if explicit and vr.isalpha() and vr.isupper():
                if vr in _LONG_VRS:
                    length = int.from_bytes(data[pos + 8 : pos + 12], "little")
                    element = (pos, tag, pos + 4, pos + 8, 4, pos + 12, length)
                else:
                    length = int.from_bytes(data[pos + 6 : pos + 8], "little")
                    element = (pos, tag, pos + 4, pos + 6, 2, pos + 8, length)
            else:
                vr = b""
                length = int.from_bytes(data[pos + 4 : pos + 8], "little")
                element = (pos, tag, None, pos + 4, 4, pos + 8, length)
            found.append(Element(*element, depth, "element", 0))  # end set below
            value = element[5]
            if length == _UNDEFINED:
                stop = items(value, end, depth + 1, explicit and vr != b"UN", tag == 0x7FE00010)
            else:
                stop = value + length
                if vr == b"SQ" or (not explicit and _is_sequence(tag)):
                    items(value, stop, depth + 1, explicit, False)
            found[index] = _with_end(found[index], stop)
            pos = stop
        return pos

    def items(pos: int, end: int, depth: int, explicit: bool, fragments: bool) -> int:
        while pos < end:
            tag = int.from_bytes(data[pos : pos + 2], "little") << 16 | int.from_bytes(
                data[pos + 2 : pos + 4], "little"
            )
            length = int.from_bytes(data[pos + 4 : pos + 8], "little")
            if tag == 0xFFFEE0DD:
                found.append(
                    Element(pos, tag, None, pos + 4, 4, pos + 8, 0, depth, "sequence-end", pos + 8)
                )
                return pos + 8
            kind = "fragment" if fragments else "item"
            index = len(found)
            found.append(Element(pos, tag, None, pos + 4, 4, pos + 8, length, depth, kind, 0))
            if length == _UNDEFINED:
                stop = walk(pos + 8, len(data), depth, explicit, True)
            else:
                stop = pos + 8 + length
                if not fragments:
                    walk(pos + 8, stop, depth, explicit, True)
            found[index] = _with_end(found[index], stop)
            pos = stop
        return pos

    walk(start, len(data), 0, not implicit, False)
    return found


def _with_end(element: Element, end: int) -> Element:
    return Element(*(getattr(element, f) for f in Element.__dataclass_fields__ if f != "end"), end)  # type: ignore[arg-type]


def _is_sequence(tag: int) -> bool:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


@dataclass(frozen=True)
class Seed:
    """A real file as it goes out: whole (STOW-RS) and its data set with the syntax (C-STORE)."""

    name: str
    data: bytes
    transfer_syntax_uid: str
    sop_class_uid: str

    @property
    def implicit(self) -> bool:
        return UID(self.transfer_syntax_uid).is_implicit_VR

    @property
    def start(self) -> int:
        return meta_end(self.data)


def seed_of(name: str, data: bytes) -> Seed:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return Seed(name, data, str(ds.file_meta.TransferSyntaxUID), str(ds.SOPClassUID))


def native_seeds(name: str, data: bytes) -> list[Seed]:
    """The file decompressed to Explicit and Implicit VR Little Endian, and RLE encoded."""
    seeds = []
    ds = dcmread(io.BytesIO(data))
    ds.decompress()
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        ds.save_as(
            buffer, implicit_vr=syntax.is_implicit_VR, little_endian=True, enforce_file_format=True
        )
        seeds.append(seed_of(f"{name}:{syntax.name}", buffer.getvalue()))
    ds = dcmread(io.BytesIO(data))
    ds.decompress()
    ds.compress(RLELossless)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    seeds.append(seed_of(f"{name}:RLE", buffer.getvalue()))
    return seeds


@dataclass(frozen=True)
class Mutant:
    seed: Seed
    kind: str
    data: bytes
    """The whole mutated file (the file meta header untouched)."""

    @property
    def dataset(self) -> bytes:
        """The data set alone, as C-STORE sends it."""
        return self.data[self.seed.start :]


def _set_length(data: bytearray, element: Element, value: int) -> None:
    if element.length_size == 2:
        struct.pack_into("<H", data, element.length_offset, value & 0xFFFF)
    else:
        struct.pack_into("<I", data, element.length_offset, value & 0xFFFFFFFF)


class Mutator:
    """Mutations of the seeds, drawn from one seeded generator."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.kinds: dict[str, Callable[[Seed, bytearray, list[Element]], bytes | None]] = {
            "byte-flip": self._byte_flip,
            "truncation": self._truncation,
            "huge-length": self._huge_length,
            "odd-length": self._odd_length,
            "unknown-vr": self._unknown_vr,
            "broken-delimiter": self._broken_delimiter,
            "pixel-length": self._pixel_length,
            "zeros": self._zeros,
            "duplicate": self._duplicate,
            "out-of-order": self._out_of_order,
            "bad-number": self._bad_number,
        }

    def mutants(
        self, seeds: list[Seed], count: int, weights: list[float] | None = None
    ) -> Iterator[Mutant]:
        maps = {s.name: element_map(s.data, s.start, implicit=s.implicit) for s in seeds}
        kinds = list(self.kinds)
        made = 0
        while made < count:
            seed = self.random.choices(seeds, weights=weights)[0]
            kind = kinds[made % len(kinds)]
            data = bytearray(seed.data)
            mutated = self.kinds[kind](seed, data, maps[seed.name])
            if mutated is None or mutated == seed.data:
                continue
            made += 1
            yield Mutant(seed, kind, mutated)

    # The mutations ----------------------------------------------------------------------------
    def _header_end(self, elements: list[Element]) -> int:
        pixel = [e for e in elements if e.tag == 0x7FE00010 and e.depth == 0]
        return pixel[0].value_offset + 64 if pixel else elements[-1].end

    def _byte_flip(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes:
        r = self.random
        where = r.random()
        if where < 0.4:  # inside a value: a name, a number, a UID, a sequence's item
            values = [e for e in elements if e.kind == "element" and e.tag != 0x7FE00010]
            element = r.choice([e for e in values if e.length and e.length != _UNDEFINED])
            start, end = element.value_offset, element.value_offset + element.length
        elif where < 0.85:  # anywhere in the header: tags, VRs, lengths, values
            start, end = seed.start, self._header_end(elements)
        else:  # anywhere, the pixels included
            start, end = seed.start, len(data)
        for _ in range(r.randint(1, 4)):
            data[r.randrange(start, end)] ^= r.randrange(1, 256)
        return bytes(data)

    def _truncation(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes:
        r = self.random
        if r.random() < 0.5:  # on an element boundary, or inside a header
            element = r.choice(elements)
            cut = element.offset + r.choice([0, 0, 2, 4, 6, 8])
        else:
            cut = r.randrange(seed.start, len(data))
        return bytes(data[: max(cut, seed.start + 1)])

    def _length_fields(self, elements: list[Element]) -> list[Element]:
        return [e for e in elements if e.kind in ("element", "item", "fragment")]

    def _huge_length(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes:
        r = self.random
        element = r.choice(self._length_fields(elements))
        if element.length_size == 2:
            value = r.choice([0xFFFF, 0xFFFE, 0x8001])
        else:
            value = r.choice([0xFFFFFFFE, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, len(data) * 4])
        _set_length(data, element, value)
        return bytes(data)

    def _odd_length(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes:
        r = self.random
        element = r.choice(self._length_fields(elements))
        if element.length == _UNDEFINED:
            value = r.choice([1, 3, 7, 0])
        else:
            value = max(element.length + r.choice([-3, -1, 1, 3, 5]), 0)
        _set_length(data, element, value)
        return bytes(data)

    def _unknown_vr(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes | None:
        r = self.random
        explicit = [e for e in elements if e.vr_offset is not None]
        if not explicit:  # implicit VR: put letters where a length's low bytes are
            element = r.choice([e for e in elements if e.kind == "element"])
            data[element.offset + 4 : element.offset + 6] = r.choice(UNKNOWN_VRS[:3])
            return bytes(data)
        element = r.choice(explicit)
        assert element.vr_offset is not None
        data[element.vr_offset : element.vr_offset + 2] = r.choice(UNKNOWN_VRS)
        return bytes(data)

    def _broken_delimiter(
        self, seed: Seed, data: bytearray, elements: list[Element]
    ) -> bytes | None:
        r = self.random
        delimiters = [
            e for e in elements if e.kind in ("item", "item-end", "sequence-end", "fragment")
        ]
        if not delimiters:
            return None
        element = r.choice(delimiters)
        choice = r.randrange(5)
        if choice == 0:  # gone
            del data[element.offset : element.offset + 8]
        elif choice == 1:  # another delimiter's tag
            data[element.offset : element.offset + 4] = r.choice(
                [b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0", b"\xfe\xff\x01\xe0"]
            )
        elif choice == 2:  # a delimiter with a length
            struct.pack_into("<I", data, element.offset + 4, r.choice([4, 8, 0x100]))
        elif choice == 3:  # an element tag where an item should be
            data[element.offset : element.offset + 4] = b"\x08\x00\x18\x00"
        else:  # a second delimiter
            data[element.offset : element.offset] = data[element.offset : element.offset + 8]
        return bytes(data)

    def _pixel_length(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes | None:
        r = self.random
        pixel = next((e for e in elements if e.tag == 0x7FE00010 and e.depth == 0), None)
        if pixel is None:
            return None
        if pixel.length != _UNDEFINED:
            change = r.choice([-2, -1, -256, -pixel.length // 2, 1, 2, 256, 4096])
            if change < 0:
                del data[pixel.end + change : pixel.end]
            else:
                data[pixel.end : pixel.end] = bytes(r.randrange(256) for _ in range(change))
            _set_length(data, pixel, max(pixel.length + change, 0))
            return bytes(data)
        fragments = [e for e in elements if e.kind == "fragment"]
        fragment = r.choice(fragments)
        choice = r.randrange(4)
        if choice == 0:  # a fragment's length changed, its bytes not
            _set_length(data, fragment, fragment.length + r.choice([-8, -2, 2, 8, 1 << 20]))
        elif choice == 1:  # a fragment cut short, its length too
            cut = r.randrange(1, max(fragment.length, 2))
            del data[fragment.end - cut : fragment.end]
            _set_length(data, fragment, fragment.length - cut)
        elif choice == 2:  # a fragment lengthened
            extra = bytes(r.randrange(256) for _ in range(r.choice([2, 64, 1000])))
            data[fragment.end : fragment.end] = extra
            _set_length(data, fragment, fragment.length + len(extra))
        else:  # every fragment gone (the offset table alone)
            first = fragments[1] if len(fragments) > 1 else fragments[0]
            del data[first.offset : fragments[-1].end]
        return bytes(data)

    def _zeros(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes:
        r = self.random
        size = r.choice([8, 16, 100, 1000, 4096])
        start = r.randrange(seed.start, self._header_end(elements))
        data[start : start + size] = bytes(min(size, len(data) - start))
        return bytes(data)

    def _top(self, elements: list[Element]) -> list[Element]:
        return [e for e in elements if e.depth == 0 and e.kind == "element" and e.tag != 0x7FE00010]

    def _duplicate(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes:
        r = self.random
        nested = [e for e in elements if e.kind == "element" and e.depth > 0]
        element = r.choice(nested if nested and r.random() < 0.3 else self._top(elements))
        copy = data[element.offset : element.end]
        data[element.end : element.end] = copy
        return bytes(data)

    def _out_of_order(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes:
        r = self.random
        top = self._top(elements)
        index = r.randrange(len(top) - 1)
        first, second = top[index], top[index + 1]
        data[first.offset : second.end] = (
            data[second.offset : second.end] + data[first.offset : first.end]
        )
        return bytes(data)

    def _bad_number(self, seed: Seed, data: bytearray, elements: list[Element]) -> bytes | None:
        """A number that is no number: IS/DS text that is not one, US of three bytes."""
        r = self.random
        ds = dcmread(io.BytesIO(seed.data), stop_before_pixels=True)
        numbers = [e for e in elements if e.kind == "element" and e.depth == 0 and e.tag in ds]
        numbers = [
            e for e in numbers if ds[e.tag].VR in ("IS", "DS", "US", "UL", "FD", "FL", "SS", "AT")
        ]
        element = r.choice(numbers)
        if ds[element.tag].VR in ("IS", "DS"):
            value = r.choice([b"1..2", b"abc ", b"+-", b"1e", b"--1", b"12345678901234567890"])
        else:
            value = r.choice([b"\x01", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
        data[element.value_offset : element.value_offset + element.length] = value
        _set_length(data, element, len(value))
        return bytes(data)


# Reading back ---------------------------------------------------------------------------------
def read_fully(data: bytes) -> Dataset:
    """``data`` read by pydicom as a viewer or an analysis would: every element converted
    (sequences and their items too), the pixels decoded (every frame), and written again.
    Raises whatever pydicom raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(data))
        for element in ds.iterall():
            _ = element.value
            _ = repr(element)
        ds.to_json_dict()
        if "PixelData" in ds:
            syntax = ds.file_meta.TransferSyntaxUID
            frames = int(ds.get("NumberOfFrames") or 1)
            if syntax.is_encapsulated:
                assert (
                    sum(1 for _ in generate_frames(ds.PixelData, number_of_frames=frames)) == frames
                )
            array = pixel_array(ds) if frames == 1 else pixel_array(ds, index=frames - 1)
            assert isinstance(array, np.ndarray) and array.size > 0
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    return ds


def file_of(dataset: bytes, seed: Seed) -> bytes:
    """A received data set behind its seed's file meta header."""
    return seed.data[: seed.start] + dataset


def with_meta(ds: Dataset, syntax: str) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    return ds


def describe(value: Any) -> str:
    return type(value).__name__
