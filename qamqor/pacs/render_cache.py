"""Rendered images kept on disk, so a study opens at once the second time.

A stored instance never changes (the same SOP Instance UID in the same file holds the same
data), so the same request renders the same bytes. Two levels, under
``<data dir>/cache/rendered``:

- ``full/``: each frame decoded and mapped to 8 bits at its default window, at full size
  (``.npy``, read back in milliseconds). Filled when a study becomes stable (``prerender``)
  or by the first request; any viewport at the default window is then a resize.
- ``out/``: the encoded answer to each distinct request (viewport, window, format, quality).

The folder is bounded (``render_cache_max_mb``): past it, the files read longest ago go first.
A damaged or missing file is a miss, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset

from qamqor.pacs import render

logger = logging.getLogger(__name__)

#: Part of every key: a change to how images are rendered must not serve old renderings.
RENDER_VERSION = "1"


class RenderCache:
    def __init__(self, folder: Path, *, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._written = 0
        self._lock = threading.Lock()
        for sub in ("full", "out"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    # Keys and files ------------------------------------------------------------------------
    @staticmethod
    def _key(*parts: object) -> str:
        text = "\x1f".join([RENDER_VERSION, *map(str, parts)])
        return hashlib.sha256(text.encode()).hexdigest()

    def _path(self, level: str, key: str) -> Path:
        return self.folder / level / key[:2] / f"{key}.{'npy' if level == 'full' else 'bin'}"

    def _read(self, path: Path) -> bytes | None:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # read recently: pruned last
        return data

    def _write(self, path: Path, data: bytes) -> None:
        if not self.max_bytes or len(data) > self.max_bytes // 4:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, path)  # readers see the whole file or none
        except OSError as exc:
            logger.warning("render cache not written: %s", type(exc).__name__)
            return
        with self._lock:
            self._written += len(data)
            due = self._written > self.max_bytes // 10
            if due:
                self._written = 0
        if due:
            self.prune()

    def prune(self) -> int:
        """Delete the files read longest ago until the folder is within its bound."""
        entries: list[tuple[float, int, Path]] = []
        for path in self.folder.rglob("*"):
            try:
                if path.is_file():
                    stat = path.stat()
                    entries.append((stat.st_mtime, stat.st_size, path))
            except OSError:
                continue
        total = sum(size for _, size, _ in entries)
        removed = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes * 0.8:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            removed += 1
        return removed

    # Full frames -----------------------------------------------------------------------------
    def _full_path(self, identity: str, frame: int) -> Path:
        return self._path("full", self._key("full", identity, frame))

    def full_image(self, identity: str, frame: int) -> Image.Image | None:
        path = self._full_path(identity, frame)
        if self._read(path) is None:
            return None
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if values.dtype != np.uint8 or values.ndim not in (2, 3):
            return None
        return Image.fromarray(values, mode="L" if values.ndim == 2 else "RGB")

    def store_full_image(self, identity: str, frame: int, image: Image.Image) -> None:
        import io

        buffer = io.BytesIO()
        np.save(buffer, np.asarray(image), allow_pickle=False)
        self._write(self._full_path(identity, frame), buffer.getvalue())

    def has_full_image(self, identity: str, frame: int) -> bool:
        return self._full_path(identity, frame).is_file()

    # Answers ---------------------------------------------------------------------------------
    def rendered(
        self,
        identity: str,
        load: Callable[[], Dataset],
        *,
        frame: int = 0,
        window: render.Window | None = None,
        viewport: render.Viewport | None = None,
        media_type: str = "image/jpeg",
        quality: int = render.DEFAULT_QUALITY,
    ) -> bytes:
        """``render.render`` of the dataset ``load()`` returns, from the cache when it can.

        ``identity``: what names the stored data (SOP Instance UID and file), so that a
        re-stored instance is rendered anew.
        """
        key = self._key("out", identity, frame, window, viewport, media_type, quality)
        path = self._path("out", key)
        cached = self._read(path)
        if cached is not None:
            return cached
        content = None
        if window is None:
            image = self.full_image(identity, frame)
            if image is not None:
                if viewport is not None:
                    image = render.fit_viewport(image, viewport)
                content = render.encode(image, media_type, quality=quality)
        if content is None:
            dataset = load()
            if window is None and not self._reduced_decode_applies(dataset, frame, viewport):
                image = render.frame_to_image(dataset, render.decode_frame(dataset, frame))
                self.store_full_image(identity, frame, image)
                if viewport is not None:
                    image = render.fit_viewport(image, viewport)
                content = render.encode(image, media_type, quality=quality)
            else:
                content = render.render(
                    dataset,
                    frame=frame,
                    window=window,
                    viewport=viewport,
                    media_type=media_type,
                    quality=quality,
                )
        self._write(path, content)
        return content

    @staticmethod
    def _reduced_decode_applies(
        dataset: Dataset, frame: int, viewport: render.Viewport | None
    ) -> bool:
        """A small viewport of a big JPEG 2000 frame decodes fast at reduced resolution (the
        plain path): no full decode for it."""
        if viewport is None or viewport.source is not None:
            return False
        rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
        if rows < 1 or columns < 1:
            return False
        scale = min(viewport.width / columns, viewport.height / rows)
        syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", ""))
        return scale < 0.5 and syntax in render.J2K_SYNTAXES

    def prerender(self, identity: str, load: Callable[[], Dataset]) -> int:
        """Decode every frame of an instance into ``full/`` (a study that just became stable);
        returns the frames written. An instance without pixels, or one that cannot be
        decoded, is skipped: its request will say why."""
        dataset: Dataset | None = None
        written = 0
        frames = 1
        frame = 0
        while frame < frames:
            if not self.has_full_image(identity, frame):
                if dataset is None:
                    dataset = load()
                    if "PixelData" not in dataset:
                        return 0
                    frames = min(render.number_of_frames(dataset), PRERENDER_MAX_FRAMES)
                try:
                    image = render.frame_to_image(dataset, render.decode_frame(dataset, frame))
                except render.RenderError:
                    return written
                self.store_full_image(identity, frame, image)
                written += 1
            frame += 1
        return written


#: Multi-frame instances (cine, tomosynthesis) are rendered on request beyond this.
PRERENDER_MAX_FRAMES = 4
