"""DICOM preprocessing: LUTs, MONOCHROME1, spacing, laterality and orientation, real files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from dicom_factory import chest, mammogram, spot_image
from pydicom import Dataset, dcmread

from qamqor.ai import Task, UnanalysableImageError
from qamqor.ai.analysis import analyse_dataset
from qamqor.ai.dicom_input import (
    chest_wall_from_header,
    chest_wall_from_image,
    load_dicom_image,
    pixel_spacing,
)
from qamqor.ai.registry import FixedModels


def test_monochrome1_is_shown_like_monochrome2() -> None:
    pixels = spot_image((128, 160), 40, 50)
    plain = load_dicom_image(chest(pixels)).pixels
    inverted = load_dicom_image(chest(pixels, monochrome1=True)).pixels
    assert np.abs(plain - inverted).max() < 2e-3  # one grey level of 12 bits
    assert inverted[50, 40] == inverted.max() == 1.0  # the spot is bright
    assert inverted[0, 159] < 0.5


def test_rescale_and_window_are_applied() -> None:
    pixels = spot_image((128, 128), 64, 64)
    ds = chest(pixels, RescaleSlope=2, RescaleIntercept=-100)
    ds.WindowCenter, ds.WindowWidth = 2 * 2048 - 100, 2 * 1024  # the middle half of the range
    shown = load_dicom_image(ds).pixels
    stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(128, 128)
    expected = np.clip((stored.astype(float) - 1536) / 1024, 0, 1)  # window in stored units
    assert np.abs(shown - expected).max() < 0.01
    assert shown.min() == 0.0 and shown.max() == 1.0  # clipped by the window


def test_no_window_uses_percentiles_and_padding_is_background() -> None:
    pixels = spot_image((128, 128), 64, 64)
    ds = chest(pixels)
    stored = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(128, 128).copy()
    stored[:, :10] = 4095
    ds.PixelData = stored.tobytes()
    ds.PixelPaddingValue = 4095
    shown = load_dicom_image(ds).pixels
    assert (shown[:, :10] == 0).all()
    assert shown[64, 64] == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    ("attributes", "spacing", "source"),
    [
        ({"PixelSpacing": [0.15, 0.16]}, (0.15, 0.16), "PixelSpacing"),
        (
            {"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.2, 0.2]},
            (0.2, 0.2),
            "ImagerPixelSpacing",
        ),
        (
            {"ImagerPixelSpacing": [0.1, 0.1], "EstimatedRadiographicMagnificationFactor": 1.25},
            (0.08, 0.08),
            "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor",
        ),
        ({}, None, "unknown"),
    ],
)
def test_pixel_spacing_at_the_patient(
    attributes: dict[str, object], spacing: tuple[float, float] | None, source: str
) -> None:
    found, found_source = pixel_spacing(chest(**attributes))
    assert found_source == source
    if spacing is None:
        assert found is None
    else:
        assert found == pytest.approx(spacing)


@pytest.mark.parametrize(
    ("ds", "message"),
    [
        (chest(PhotometricInterpretation="PALETTE COLOR"), "photometric interpretation"),
        (chest(NumberOfFrames=3), "multi-frame"),
    ],
)
def test_unreadable_images_say_why(ds: Dataset, message: str) -> None:
    with pytest.raises(UnanalysableImageError, match=message):
        load_dicom_image(ds)


def test_corrupt_pixels_are_not_analysed_with_the_reason(tiny_bundle: Path) -> None:
    ds = chest()
    ds.PixelData = ds.PixelData[:100]  # truncated
    outcome = analyse_dataset(ds, FixedModels([tiny_bundle]))
    assert outcome.result is None
    assert "cannot be decoded" in outcome.reason.english()


@pytest.mark.parametrize(
    ("laterality", "orientation", "stored_mirrored"),
    [
        ("R", ["A", "L"], False),  # right breast, chest wall at the left edge
        ("L", ["P", "L"], True),  # left breast, chest wall at the right edge (hanging display)
        ("L", ["A", "R"], False),  # left breast stored like a right one
        ("L", None, True),  # no orientation: the image shows where the chest wall is
    ],
)
def test_mammogram_findings_come_back_in_stored_pixels(
    tiny_mammo_bundle: Path, laterality: str, orientation: list[str] | None, stored_mirrored: bool
) -> None:
    shape = (300, 200)
    x, y = 60.0, 120.0  # a spot near the chest wall
    pixels = spot_image(shape, x, y, radius=6, background=0.0)
    breast = np.zeros(shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    breast[(xx / 130.0) ** 2 + ((yy - 150) / 140.0) ** 2 <= 1] = 0.35  # tissue at the left edge
    pixels = np.clip(pixels + breast, 0, 1)
    if stored_mirrored:
        pixels, x = pixels[:, ::-1], shape[1] - 1 - x
    attributes = {"PatientOrientation": orientation} if orientation else {}
    ds = mammogram(np.ascontiguousarray(pixels), laterality=laterality, **attributes)
    image = load_dicom_image(ds)
    expected_wall = "right" if stored_mirrored else "left"
    assert (chest_wall_from_header(ds) or chest_wall_from_image(image.pixels)) == expected_wall
    outcome = analyse_dataset(ds, FixedModels([tiny_mammo_bundle]))
    assert outcome.result is not None and outcome.task is Task.MAMMO
    top = outcome.result.findings[0]
    assert math.hypot(top.x - x, top.y - y) <= 6


def test_real_files_are_displayed_as_radiologists_see_them(shared_dicom_dir: Path) -> None:
    cr = load_dicom_image(dcmread(shared_dicom_dir / "RG1_J2KI.dcm"))  # MONOCHROME1, 15 bits
    assert cr.spacing is None and cr.spacing_source == "unknown"  # PixelSpacing is 0\0
    rows, columns = cr.shape
    band = cr.pixels[rows // 3 : 2 * rows // 3]
    spine = float(band[:, int(columns * 0.45) : int(columns * 0.55)].mean())
    lungs = float(band[:, int(columns * 0.2) : int(columns * 0.3)].mean())
    assert spine > lungs + 0.1  # the mediastinum is white, the lungs dark
    mg = dcmread(shared_dicom_dir / "MG1_J2KI.dcm")
    image = load_dicom_image(mg)
    assert image.laterality == "L" and image.chest_wall == "left"  # Patient Orientation A\F
    assert chest_wall_from_image(image.pixels) == "left"
