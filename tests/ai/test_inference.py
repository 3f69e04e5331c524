"""The analyser: coordinates, laterality, bad input; and the shipped bundles on real images.

The tiny bundle is a max-pooling graph: its heat map peaks on the brightest spot, so where the
findings land checks the whole chain of resampling, padding, mirroring and mapping back.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from ai_helpers import shared_data, shipped_bundle
from PIL import Image

from qamqor.ai import Analyser, Finding, UnanalysableImageError
from qamqor.ai.preprocess import prepare


def _spot(shape: tuple[int, int], x: float, y: float, radius: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = np.full(shape, 0.3, dtype=np.float32)
    image += 0.05 * np.sin(xx / 7.0) * np.cos(yy / 5.0)  # some texture, not a flat image
    image += 0.6 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * radius**2))
    return image


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((200, 300), None), ((200, 300), 0.5), ((333, 250), (0.7, 0.5)), ((120, 90), 2.0)],
)
def test_top_finding_in_input_coordinates(
    tiny_bundle: Path, shape: tuple[int, int], spacing: float | tuple[float, float] | None
) -> None:
    analyser = Analyser(tiny_bundle)
    x, y = shape[1] * 0.7, shape[0] * 0.25
    image = _spot(shape, x, y, radius=0.03 * max(shape))
    result = analyser.analyse(image, pixel_spacing_mm=spacing)
    top = result.findings[0]
    # one heat-map cell is 4 model pixels: allow that much, in input pixels
    scale = prepare(image, spec=analyser.manifest.input, spacing=spacing).scale_x
    assert math.hypot(top.x - x, top.y - y) <= 4 / scale
    assert result.score == top.score
    assert 0 < result.score < 1
    assert result.model == "tiny-test-1.2.3"
    assert result.heatmap_image().shape == shape
    assert result.as_dict()["findings"] == [
        {"x": round(f.x, 1), "y": round(f.y, 1), "score": round(f.score, 4)}
        for f in result.findings
    ]


def test_uint8_and_float_give_the_same_answer(tiny_bundle: Path) -> None:
    analyser = Analyser(tiny_bundle)
    image = _spot((160, 160), 40, 100)
    as_uint8 = np.round(image * 255).astype(np.uint8)
    a = analyser.analyse(as_uint8)
    b = analyser.analyse(as_uint8.astype(np.float32) / 255)
    wide = analyser.analyse(as_uint8.astype(np.uint16) * 16)  # integers: min-max scaled
    for other in (b, wide):
        assert len(other.findings) == len(a.findings)
        for f, g in zip(a.findings, other.findings, strict=True):
            assert (f.x, f.y, f.score) == pytest.approx((g.x, g.y, g.score), abs=1e-3)


def test_mammogram_laterality_mirrors_and_maps_back(tiny_mammo_bundle: Path) -> None:
    analyser = Analyser(tiny_mammo_bundle)
    image = _spot((256, 200), 150, 60)
    for laterality in ("L", "R"):
        top = analyser.analyse(image, laterality=laterality).findings[0]
        assert math.hypot(top.x - 150, top.y - 60) <= 4
    left = analyser.analyse(image, laterality="L").heatmap
    right = analyser.analyse(image, laterality="R").heatmap
    # the overlay heat map is shown in the input's orientation either way (within a cell)
    (li, lj), (ri, rj) = (np.unravel_index(h.argmax(), h.shape) for h in (left, right))
    assert li == ri and abs(int(lj) - int(rj)) <= 1
    # the chest-wall side, when known, decides the mirroring instead of the laterality
    for side in ("left", "right"):
        top = analyser.analyse(image, laterality="L", chest_wall=side).findings[0]
        assert math.hypot(top.x - 150, top.y - 60) <= 4
    with pytest.raises(UnanalysableImageError, match="chest wall side"):
        analyser.analyse(image, laterality="L", chest_wall="top")
    with pytest.raises(UnanalysableImageError, match="laterality"):
        analyser.analyse(image)
    with pytest.raises(UnanalysableImageError, match="laterality"):
        analyser.analyse(image, laterality="B")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((64, 64, 3), np.uint8), "2-D"),
        (np.zeros((8, 64), np.uint8), "size"),
        (np.full((64, 64), np.nan, np.float32), "non-finite"),
        (np.full((64, 64), 2.0, np.float32), "0..1"),
        (np.full((64, 64), 7, np.uint8), "flat"),
        (np.zeros((64, 64), np.complex64), "pixel type"),
    ],
)
def test_bad_images_are_refused(tiny_bundle: Path, image: np.ndarray, message: str) -> None:
    with pytest.raises(UnanalysableImageError, match=message):
        Analyser(tiny_bundle).analyse(image)
    with pytest.raises(UnanalysableImageError, match="spacing"):
        Analyser(tiny_bundle).analyse(_spot((64, 64), 30, 30), pixel_spacing_mm=0.0)


def test_finding_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        Finding(x=1, y=2, score=1.5)
    with pytest.raises(ValueError):
        Finding(x=float("nan"), y=2, score=0.5)


# ------------------------------------------------------------------------------------------
# The shipped bundles on real images. These images were in the shipped model's training set:
# the tests guard the bundle and the inference code (orientation, scaling, export), they are
# not an evaluation. The cross-validated figures in the model cards are.


def _jsrt_rows() -> list[dict[str, str]]:
    with (shared_data("jsrt224") / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_chest_bundle_points_at_obvious_nodules() -> None:
    analyser = Analyser(shipped_bundle("chest-nodule"))
    assert analyser.manifest.task.value == "chest"
    root = shared_data("jsrt224")
    rows = _jsrt_rows()
    obvious = [r for r in rows if r["subtlety"] == "5"]
    normals = [r for r in rows if r["state"] == "non-nodule"][:5]
    normal_scores = [
        analyser.analyse(np.asarray(Image.open(root / "images" / r["study_id"]))).score
        for r in normals
    ]
    hits = 0
    for row in obvious:
        pixels = np.asarray(Image.open(root / "images" / row["study_id"]))
        # the caller's image is 224 px; give it the spacing a 224 px JSRT film has
        result = analyser.analyse(pixels, pixel_spacing_mm=1.6)
        top = result.findings[0]
        cx, cy = float(row["x"]) * 224 / 2048, float(row["y"]) * 224 / 2048
        tolerance_px = max(float(row["size"]) / 2, 10.0) / 1.6
        if math.hypot(top.x - cx, top.y - cy) <= tolerance_px and result.score > max(normal_scores):
            hits += 1
    assert hits >= len(obvious) - 1


def test_mammo_bundle_points_at_obvious_masses() -> None:
    analyser = Analyser(shipped_bundle("mammo"))
    root = shared_data("mini-mias")
    # well-circumscribed masses that are plain to see (mdb015, mdb021: right and left breasts)
    cases = {"mdb015.png": (595, 160, 68), "mdb021.png": (493, 899, 49)}
    for name, (x, y, radius) in cases.items():
        pixels = np.asarray(Image.open(root / "images" / name))
        laterality = "L" if int(name[3:6]) % 2 else "R"
        top = analyser.analyse(pixels, pixel_spacing_mm=0.2, laterality=laterality).findings[0]
        assert math.hypot(top.x - x, top.y - y) <= max(radius, 50)
