"""Synthetic radiographs and mammograms as real DICOM datasets (for routing and pipeline tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR = "1.2.840.10008.5.1.4.1.1.1"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
MG = "1.2.840.10008.5.1.4.1.1.1.2"
MG_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def spot_image(
    shape: tuple[int, int], x: float, y: float, radius: float = 12.0, *, background: float = 0.3
) -> np.ndarray:
    """Grey levels 0..1 with some texture and one bright spot centred at (x, y)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = np.full(shape, background, dtype=np.float64)
    image += 0.05 * np.sin(xx / 7.0) * np.cos(yy / 5.0)
    image += 0.6 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * radius**2))
    return np.clip(image, 0, 1)


def make_dataset(
    pixels: np.ndarray | None = None,
    *,
    sop_class: str = DX,
    modality: str = "DX",
    study_uid: str | None = None,
    series_uid: str | None = None,
    monochrome1: bool = False,
    bits: int = 12,
    **attributes: Any,
) -> Dataset:
    """A single-frame grey image; ``pixels`` in 0..1 are stored as ``bits``-bit integers
    (inverted for MONOCHROME1 so that the displayed image is the same)."""
    if pixels is None:
        pixels = spot_image((256, 256), 100, 80)
    top = 2**bits - 1
    stored = np.round((1.0 - pixels if monochrome1 else pixels) * top).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = "TEST^AI"
    ds.PatientID = "AI-TEST-1"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "Qamqor tests"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def chest(pixels: np.ndarray | None = None, **attributes: Any) -> Dataset:
    values: dict[str, Any] = {"BodyPartExamined": "CHEST", "ViewPosition": "PA"}
    values.update(attributes)
    return make_dataset(pixels, **values)


def mammogram(
    pixels: np.ndarray | None = None, *, laterality: str = "L", view: str = "CC", **attributes: Any
) -> Dataset:
    values: dict[str, Any] = {
        "sop_class": MG,
        "modality": "MG",
        "BodyPartExamined": "BREAST",
        "ViewPosition": view,
        "ImageLaterality": laterality,
        "PresentationIntentType": "FOR PRESENTATION",
    }
    values.update(attributes)
    return make_dataset(pixels, **values)


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path
