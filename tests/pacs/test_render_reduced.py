"""Rendering a large JPEG 2000 image into a small viewport decodes fewer resolution levels and
gives the same picture as the full decode (real mammogram and chest film)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from qamqor.pacs import render


def _full(ds, viewport: render.Viewport) -> np.ndarray:  # type: ignore[no-untyped-def]
    image = render.fit_viewport(render.frame_to_image(ds, render.decode_frame(ds, 0)), viewport)
    return np.asarray(image, dtype=np.float64)


@pytest.mark.parametrize("name", ["MG1_J2KI.dcm", "RG1_J2KI.dcm"])
def test_reduced_decode_matches_the_full_one(shared_dicom_dir: Path, name: str) -> None:
    ds = dcmread(shared_dicom_dir / name)
    viewport = render.Viewport(420, 640)
    reduced = render.reduced_j2k_frame(ds, 0, viewport)
    assert reduced is not None
    assert reduced.shape[0] < ds.Rows  # fewer levels decoded
    assert int(reduced.max()) < 2**ds.BitsStored  # back to the stored precision
    fast = render.render(ds, viewport=viewport, media_type="image/png")
    picture = np.asarray(Image.open(io.BytesIO(fast)), dtype=np.float64)
    full = _full(ds, viewport)
    assert picture.shape == full.shape
    assert reduced.shape[0] >= picture.shape[0] and reduced.shape[1] >= picture.shape[1]
    assert np.abs(picture - full).mean() < 2.0  # grey levels of 255


def test_no_reduction_where_it_would_lose_detail(shared_dicom_dir: Path) -> None:
    ds = dcmread(shared_dicom_dir / "MG1_J2KI.dcm")
    assert render.reduced_j2k_frame(ds, 0, render.Viewport(ds.Columns, ds.Rows)) is None
    assert render.reduced_j2k_frame(ds, 0, render.Viewport(2000, 3000)) is None
    native = dcmread(shared_dicom_dir / "CT1_J2KI.dcm")
    native.decompress()
    assert render.reduced_j2k_frame(native, 0, render.Viewport(64, 64)) is None
