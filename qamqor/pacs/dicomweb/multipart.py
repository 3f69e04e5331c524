"""``multipart/related`` bodies (RFC 2387) both ways, and ``Accept`` headers, for DICOMweb.

Responses are written part by part from a generator, so a large study streams out without
being held in memory. Requests (STOW-RS) are parsed as they arrive with python-multipart's
streaming parser, which handles any multipart subtype, not only form-data; a part is handed
over once its closing boundary has been read.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser


class MultipartError(ValueError):
    """The request body is not a well-formed multipart message."""


# Headers ------------------------------------------------------------------------------------
def _split_outside_quotes(text: str, separator: str) -> list[str]:
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``'multipart/related; type="application/dicom"'`` -> ``('multipart/related', {...})``.

    The media type and parameter names are lower-cased; quotes around values are removed.
    """
    pieces = _split_outside_quotes(value, ";")
    media_type = pieces[0].strip().lower()
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, sep, raw = piece.partition("=")
        if not sep:
            continue
        params[name.strip().lower()] = raw.strip().strip('"').strip()
    return media_type, params


@dataclass(frozen=True)
class MediaRange:
    """One acceptable representation from an ``Accept`` header.

    ``media_type`` is what each part (or the whole body) is: for
    ``multipart/related; type="image/jp2"`` it is ``image/jp2`` and ``multipart`` is true.
    """

    media_type: str
    transfer_syntax: str | None = None
    q: float = 1.0
    multipart: bool = False

    @property
    def is_wildcard(self) -> bool:
        return self.media_type in ("*/*", "*")

    def matches(self, media_type: str) -> bool:
        """Whether this range accepts ``media_type`` (``image/*`` accepts ``image/png``)."""
        if self.is_wildcard:
            return True
        if self.media_type.endswith("/*"):
            return media_type.startswith(self.media_type[:-1])
        return self.media_type == media_type


def parse_accept(header: str | None) -> list[MediaRange]:
    """The ranges of an ``Accept`` header, most preferred first (q=0 ranges dropped).

    An absent or empty header gives ``[*/*]``.
    """
    if not header or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, item in enumerate(_split_outside_quotes(header, ",")):
        if not item.strip():
            continue
        media_type, params = parse_media_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 1.0
        if q <= 0:
            continue
        multipart = media_type == "multipart/related"
        if multipart:
            media_type = params.get("type", "*/*").lower() or "*/*"
        syntax = params.get("transfer-syntax") or None
        ranges.append((-q, position, MediaRange(media_type, syntax, q, multipart)))
    return [r for _, _, r in sorted(ranges, key=lambda t: (t[0], t[1]))]


# Responses ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    content_type: str
    payload: bytes
    location: str | None = None


def new_boundary() -> str:
    return f"qamqor-{secrets.token_hex(16)}"


def content_type(part_type: str, boundary: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def stream(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a multipart/related message, one chunk per part header and payload."""
    for part in parts:
        head = [f"--{boundary}", f"Content-Type: {part.content_type}"]
        if part.location:
            head.append(f"Content-Location: {part.location}")
        head.append(f"Content-Length: {len(part.payload)}")
        yield ("\r\n".join(head) + "\r\n\r\n").encode("ascii")
        yield part.payload
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


# Requests -----------------------------------------------------------------------------------
@dataclass
class ReceivedPart:
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    size: int = 0
    """Bytes the part had (its body is empty when it was larger than the parser's limit)."""
    oversized: bool = False
    """Larger than ``max_part_bytes``: its bytes were read past, not kept."""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class RelatedParser:
    """Feed a multipart body chunk by chunk; collect each part when it is complete.

    A part's bytes are kept until it has ``max_part_bytes``; beyond that the part is marked
    ``oversized`` and its bytes are counted and dropped, so that one huge part never holds
    more memory than the limit.
    """

    def __init__(self, boundary: str, *, max_part_bytes: int | None = None) -> None:
        if not boundary or len(boundary) > 70:
            raise MultipartError("the multipart boundary is missing or longer than 70 characters")
        self.max_part_bytes = max_part_bytes
        self._current: ReceivedPart | None = None
        self._chunks: list[bytes] = []
        self._field = bytearray()
        self._value = bytearray()
        self._done: list[ReceivedPart] = []
        self.finished = False
        self.parts_seen = 0
        self._parser = MultipartParser(
            boundary.encode("latin-1"),
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_end": self._on_end,
            },
        )

    def _on_part_begin(self) -> None:
        self._current = ReceivedPart()
        self._chunks = []
        self.parts_seen += 1

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None:
            return
        part.size += end - start
        if part.oversized:
            return
        if self.max_part_bytes is not None and part.size > self.max_part_bytes:
            part.oversized = True
            self._chunks = []  # the memory goes now, not when the part ends
            return
        self._chunks.append(data[start:end])

    def _on_part_end(self) -> None:
        part = self._current
        if part is not None:
            part.body = b"".join(self._chunks)  # one copy, into the bytes that are parsed
            self._chunks = []
            self._done.append(part)
        self._current = None

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        if self._current is not None:
            name = self._field.decode("latin-1").strip().lower()
            self._current.headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _on_end(self) -> None:
        self.finished = True

    def feed(self, chunk: bytes) -> list[ReceivedPart]:
        """Parse ``chunk``; return the parts completed by it."""
        if chunk and not self.finished:
            try:
                self._parser.write(chunk)
            except MultipartParseError as exc:
                raise MultipartError(f"malformed multipart body: {exc}") from None
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Check that the body ended with its closing boundary."""
        if not self.finished:
            if self._current is not None:
                raise MultipartError("the body ends in the middle of a part (truncated upload?)")
            raise MultipartError("the body has no closing multipart boundary")
