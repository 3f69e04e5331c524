"""Rendering frames for people: modality LUT, VOI LUT / window, MONOCHROME1, colour, viewport."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian

from qamqor.pacs import render
from qamqor.pacs.render import FrameNotFoundError, RenderError, Viewport, VoiFunction, Window


def _image(arr: np.ndarray, photometric: str, bits_stored: int, **attributes: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(arr, photometric, bits_stored)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _png(ds: Dataset, **kwargs: object) -> np.ndarray:
    return _decode(render.render(ds, media_type="image/png", **kwargs))  # type: ignore[arg-type]


# A 12-bit ramp: 0, 1, ..., 4095 over 64 x 64 pixels.
RAMP = np.arange(4096, dtype=np.uint16).reshape(64, 64)


def test_header_window_maps_its_range_onto_0_to_255() -> None:
    ds = _image(RAMP, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=4096)
    out = _png(ds)
    assert out.dtype == np.uint8
    assert out.shape == (64, 64)
    assert out.flat[0] == 0
    assert out.flat[-1] == 255
    assert abs(int(out.flat[2048]) - 128) <= 1
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotonic, like the input


def test_requested_window_overrides_the_header() -> None:
    ds = _image(RAMP, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=4096)
    out = _png(ds, window=Window(center=100, width=11)).ravel()
    assert np.all(out[:94] == 0)
    assert np.all(out[106:] == 255)
    assert 0 < out[100] < 255


def test_monochrome1_is_inverted() -> None:
    mono2 = _png(_image(RAMP, "MONOCHROME2", 12, WindowCenter=2048, WindowWidth=4096))
    mono1 = _png(_image(RAMP, "MONOCHROME1", 12, WindowCenter=2048, WindowWidth=4096))
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert mono1.flat[-1] == 0  # the highest value is black


def test_rescale_is_applied_before_the_window() -> None:
    # CT: stored 0..4095 with intercept -1024 gives -1024..3071 HU; a soft-tissue window.
    ds = _image(
        RAMP,
        "MONOCHROME2",
        12,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    out = _png(ds).ravel()
    assert out[1024 - 160 - 1] == 0  # -161 HU: below the window
    assert out[1024 + 240 + 1] == 255  # 241 HU: above it
    assert abs(int(out[1024 + 40]) - 128) <= 1  # 40 HU: the centre


def test_sigmoid_and_linear_exact_functions() -> None:
    ds = _image(RAMP, "MONOCHROME2", 12)
    sigmoid = _png(ds, window=Window(2000, 400, VoiFunction.SIGMOID)).ravel()
    assert abs(int(sigmoid[2000]) - 128) <= 1
    assert sigmoid[0] == 0 and sigmoid[-1] == 255
    exact = _png(ds, window=Window(2000, 400, VoiFunction.LINEAR_EXACT)).ravel()
    assert exact[1800] == 0 and exact[2201] == 255
    with pytest.raises(ValueError):
        Window(2000, 0.5)  # LINEAR needs a width of at least 1
    with pytest.raises(ValueError):
        Window(2000, 0, VoiFunction.SIGMOID)


def test_without_any_window_the_value_range_is_shown() -> None:
    values = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 1001) + 1000
    out = _png(_image(values, "MONOCHROME2", 16))
    assert out.min() == 0 and out.max() == 255


def test_voi_lut_sequence_is_used() -> None:
    ds = _image(np.arange(256, dtype=np.uint8).reshape(16, 16), "MONOCHROME2", 8)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = [255 - i for i in range(256)]  # a LUT that inverts
    ds.VOILUTSequence = [item]
    out = _png(ds).ravel()
    np.testing.assert_array_equal(out, 255 - np.arange(256))


def test_rgb_and_ybr_come_out_as_rgb() -> None:
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:, :2] = (255, 0, 0)
    rgb[:, 2:4] = (0, 255, 0)
    rgb[:, 4:] = (0, 0, 255)
    out = _png(_image(rgb, "RGB", 8))
    assert out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out, rgb)

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = _png(_image(ybr, "YBR_FULL", 8))
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 3

    jpeg = _decode(render.render(_image(rgb, "RGB", 8), media_type="image/jpeg"))
    assert jpeg.shape == (4, 6, 3)


def test_palette_colour() -> None:
    ds = _image(np.array([[0, 1], [2, 3]], dtype=np.uint8), "PALETTE COLOR", 8)
    ds.RedPaletteColorLookupTableDescriptor = [4, 0, 16]
    ds.GreenPaletteColorLookupTableDescriptor = [4, 0, 16]
    ds.BluePaletteColorLookupTableDescriptor = [4, 0, 16]
    ds.RedPaletteColorLookupTableData = np.array([0, 65535, 0, 0], "<u2").tobytes()
    ds.GreenPaletteColorLookupTableData = np.array([0, 0, 65535, 0], "<u2").tobytes()
    ds.BluePaletteColorLookupTableData = np.array([0, 0, 0, 65535], "<u2").tobytes()
    out = _png(ds)
    assert out.tolist() == [[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 255]]]


def test_viewport_scales_and_crops_keeping_the_aspect_ratio() -> None:
    wide = np.zeros((100, 200), dtype=np.uint8)
    ds = _image(wide, "MONOCHROME2", 8)
    assert _png(ds, viewport=Viewport(50, 50)).shape == (25, 50)
    assert _png(ds, viewport=Viewport(400, 400)).shape == (200, 400)
    cropped = _png(ds, viewport=Viewport(20, 20, source=(0, 0, 40, 40)))
    assert cropped.shape == (20, 20)
    with pytest.raises(ValueError):
        Viewport(0, 10)
    with pytest.raises(ValueError):
        _png(ds, viewport=Viewport(10, 10, source=(500, 500, 10, 10)))


def test_jpeg_quality_changes_the_size() -> None:
    noise = np.random.default_rng(7).integers(0, 256, (128, 128), dtype=np.uint8)
    ds = _image(noise, "MONOCHROME2", 8)
    low = render.render(ds, quality=10)
    high = render.render(ds, quality=95)
    assert low[:2] == high[:2] == b"\xff\xd8"
    assert len(low) < len(high)


def test_frames_of_a_multiframe_image() -> None:
    frames = np.stack([np.full((8, 8), v, dtype=np.uint8) for v in (0, 100, 200)])
    ds = _image(frames, "MONOCHROME2", 8, WindowCenter=127.5, WindowWidth=256)
    assert [int(_png(ds, frame=i).mean()) for i in range(3)] == [0, 100, 200]
    with pytest.raises(FrameNotFoundError):
        render.render(ds, frame=3)


def test_what_cannot_be_rendered_is_refused_with_a_reason() -> None:
    with pytest.raises(RenderError, match="no pixel data"):
        render.render(Dataset())
    ds = _image(np.zeros((4, 4), dtype=np.uint8), "MONOCHROME2", 8)
    with pytest.raises(RenderError, match="image/gif"):
        render.render(ds, media_type="image/gif")


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 written out, onto 0..255."""
    x = x.astype(np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y[x <= center - 0.5 - (width - 1) / 2] = 0
    y[x > center - 0.5 + (width - 1) / 2] = 255
    return np.clip(np.rint(y), 0, 255)


def test_a_real_monochrome1_radiograph(shared_dicom_dir: Path) -> None:
    ds = pydicom.dcmread(shared_dicom_dir / "RG3_RLE.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    stored = ds.pixel_array
    out = render.grayscale_to_8bit(stored, ds, None)
    expected = 255 - _linear_window(stored, float(ds.WindowCenter), float(ds.WindowWidth))
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert _png(ds, viewport=Viewport(256, 256)).shape == (256, 256)


def test_a_real_signed_ct_without_a_window(shared_dicom_dir: Path) -> None:
    ds = pydicom.dcmread(shared_dicom_dir / "CT1_J2KI.dcm")
    assert ds.PixelRepresentation == 1 and "WindowCenter" not in ds
    stored = ds.pixel_array
    out = render.grayscale_to_8bit(stored, ds, None)
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    assert np.abs(out.astype(int) - expected).max() <= 1
