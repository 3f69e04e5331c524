"""Rendered images come from the disk cache the second time, and from the frames decoded
ahead when a study became stable: the stored file is not read or decoded again."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from qamqor.pacs import render
from qamqor.pacs.render_cache import RenderCache

CHEST_J2K = "RG1_J2KI.dcm"  # 1841 x 1955 JPEG 2000: 1.5-2 s to decode


class Loads:
    """The stored file, read on demand; counts how often it was needed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def __call__(self) -> pydicom.Dataset:
        self.count += 1
        return pydicom.dcmread(self.path)


@pytest.fixture
def chest(shared_dicom_dir: Path) -> Loads:
    return Loads(shared_dicom_dir / CHEST_J2K)


def test_the_same_request_is_answered_from_the_cache(tmp_path: Path, chest: Loads) -> None:
    cache = RenderCache(tmp_path, max_bytes=1 << 30)
    viewport = render.Viewport(1200, 900)
    first = cache.rendered("uid:file", chest, viewport=viewport)
    assert chest.count == 1
    again = cache.rendered("uid:file", chest, viewport=viewport)
    assert again == first
    assert chest.count == 1  # not read, not decoded
    # What the plain renderer makes, byte for byte the same image size and nearly the pixels.
    plain = render.render(chest(), viewport=viewport)
    a = np.asarray(Image.open(io.BytesIO(first)), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(plain)), dtype=np.int16)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 2


def test_frames_decoded_ahead_serve_any_viewport(tmp_path: Path, chest: Loads) -> None:
    cache = RenderCache(tmp_path, max_bytes=1 << 30)
    assert cache.prerender("uid:file", chest) == 1
    assert cache.prerender("uid:file", chest) == 0  # already there: not decoded twice
    loads = chest.count
    for size in ((1600, 1000), (700, 700), (128, 128)):
        picture = Image.open(
            io.BytesIO(cache.rendered("uid:file", chest, viewport=render.Viewport(*size)))
        )
        assert max(picture.size) <= max(size)
    full = Image.open(io.BytesIO(cache.rendered("uid:file", chest, media_type="image/png")))
    assert full.size == (1841, 1955)
    assert chest.count == loads


def test_another_file_or_a_window_is_rendered_anew(tmp_path: Path, chest: Loads) -> None:
    cache = RenderCache(tmp_path, max_bytes=1 << 30)
    cache.rendered("uid:file-1", chest, viewport=render.Viewport(256, 256))
    cache.rendered("uid:file-2", chest, viewport=render.Viewport(256, 256))
    assert chest.count == 2  # the instance was stored again: its new file is rendered
    narrow = cache.rendered(
        "uid:file-2", chest, viewport=render.Viewport(256, 256), window=render.Window(100, 10)
    )
    assert chest.count == 3
    assert np.asarray(Image.open(io.BytesIO(narrow))).mean() < 10


def test_a_damaged_cache_file_is_a_miss_not_an_error(tmp_path: Path, chest: Loads) -> None:
    cache = RenderCache(tmp_path, max_bytes=1 << 30)
    cache.prerender("uid:file", chest)
    for path in (tmp_path / "full").rglob("*.npy"):
        path.write_bytes(b"\x93NUMPY garbage")
    picture = cache.rendered("uid:file", chest, viewport=render.Viewport(300, 300))
    assert max(Image.open(io.BytesIO(picture)).size) == 300


def test_the_folder_stays_within_its_bound(tmp_path: Path, chest: Loads) -> None:
    bound = 12 << 20  # one full chest frame is 3.6 MB
    cache = RenderCache(tmp_path, max_bytes=bound)
    for n in range(6):
        cache.rendered(f"uid:{n}", chest, viewport=render.Viewport(1000 + n, 1000))
    cache.prune()
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total <= bound
