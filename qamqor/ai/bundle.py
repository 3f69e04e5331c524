"""The model bundle: one file (``*.qmodel``, a zip) holding ``model.onnx`` and ``manifest.json``.

A :class:`Manifest` that exists is valid: it refuses unknown fields, a bad name or version, an
out-of-range threshold, a task without its preprocessing, and a checksum that is not a sha256.
:func:`read_bundle` checks that the weights inside match the checksum in the manifest, so a
bundle copied from a USB stick is either exactly what was trained or refused.

Layout of the zip (nothing else is allowed in it)::

    manifest.json   UTF-8 JSON, :class:`Manifest`
    model.onnx      ONNX weights; input ``input.tensor_name`` [1, 1, H, W] float32, output
                    ``output.tensor_name`` [1, 1, H / stride, W / stride]: logits of a suspicious
                    finding per heat-map cell
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qamqor.ai.errors import InvalidBundleError

BUNDLE_SUFFIX = ".qmodel"
MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"
MAX_ONNX_BYTES = 200 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
_ZIP_DATE = (2024, 1, 1, 0, 0, 0)


class Task(StrEnum):
    """What a model analyses."""

    CHEST = "chest"
    """Chest radiograph, PA or AP (CR/DX): lung nodules."""
    MAMMO = "mammo"
    """Mammogram, one view of one breast (MG, CC or MLO): masses, calcifications, distortions."""


class Normalization(StrEnum):
    """How grey levels are standardised before the network sees them."""

    ZSCORE = "zscore"
    """Subtract the image's mean, divide by its standard deviation."""
    ZSCORE_FOREGROUND = "zscore_foreground"
    """The same, with mean and deviation over pixels above ``foreground_threshold`` (the breast,
    not the black background)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The network's input and the preprocessing that produces it from a display-ready image
    (grey levels 0..1, brighter = denser, already in display orientation)."""

    tensor_name: str = Field(default="image", min_length=1)
    pixel_spacing_mm: float = Field(gt=0, le=10)
    """The image is resampled to this spacing (mm per pixel) when the input's spacing is known."""
    reference_size: int = Field(ge=16, le=4096)
    """When the spacing is unknown, the longer side is resized to this many pixels."""
    max_size: int = Field(default=1024, ge=16, le=8192)
    """Neither side of the resampled image may exceed this (it is scaled down further)."""
    normalization: Normalization
    foreground_threshold: float = Field(default=0.0, ge=0, lt=1)
    size_multiple: int = Field(ge=1, le=64)
    """The resampled image is padded (bottom and right) to a multiple of this."""
    canonical_laterality: Literal["R"] | None = None
    """Mammography: images of a left breast are mirrored so that every breast looks like a right
    one (chest wall on the left of the image). ``None`` for chest radiographs."""

    @model_validator(mode="after")
    def _fits(self) -> InputSpec:
        if self.reference_size > self.max_size:
            raise ValueError("reference_size exceeds max_size")
        return self


class OutputSpec(_Strict):
    tensor_name: str = Field(default="heatmap", min_length=1)
    stride: int = Field(ge=1, le=64)
    """Heat-map cell (i, j) is centred on model pixel (stride * j, stride * i)."""


class Calibration(_Strict):
    """Logit of a heat-map cell to probability: ``sigmoid(slope * logit + intercept)``."""

    slope: float = Field(gt=0)
    intercept: float

    @field_validator("slope", "intercept")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


class FindingSpec(_Strict):
    """How findings are read off the heat map."""

    min_distance_mm: float = Field(gt=0, le=200)
    """Two findings are at least this far apart (non-maximum suppression)."""
    max_findings: int = Field(ge=1, le=20)
    min_score: float = Field(ge=0, le=1)
    """Findings below this probability are dropped (the top one is always kept)."""


class OperatingPoint(_Strict):
    """A threshold on the image score with the figures measured for it in cross-validation."""

    threshold: float = Field(ge=0, le=1)
    specificity: float = Field(ge=0, le=1)
    sensitivity: float = Field(ge=0, le=1)
    description: str = ""


_NAME = r"^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$"
_SEMVER = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$"


class Manifest(_Strict):
    """What a bundle is, how to feed it, and how well it did (``manifest.json``)."""

    format_version: Literal[1] = 1
    name: str = Field(pattern=_NAME)
    version: str = Field(pattern=_SEMVER)
    task: Task
    labels: list[str] = Field(min_length=1)
    """What a finding is (e.g. ``["lung nodule"]``)."""
    input: InputSpec
    output: OutputSpec
    calibration: Calibration
    findings: FindingSpec
    operating_points: dict[str, OperatingPoint]
    """Named thresholds on the image score; ``default`` is the one triage uses."""
    intended_use: str = Field(min_length=20)
    training_data: str = Field(min_length=10)
    validation: dict[str, float | int | str]
    """Cross-validated figures (``auc``, ``localized_auc``...) and how they were obtained."""
    license: str = Field(min_length=2)
    created: datetime
    onnx_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        if any(not label.strip() for label in value) or len(set(value)) != len(value):
            raise ValueError("labels must be non-empty and distinct")
        return value

    @field_validator("created")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("created must be timezone-aware")
        return value

    @field_validator("validation")
    @classmethod
    def _finite_metrics(cls, value: dict[str, float | int | str]) -> dict[str, float | int | str]:
        for key, metric in value.items():
            if isinstance(metric, float) and not math.isfinite(metric):
                raise ValueError(f"validation metric {key!r} is not finite")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if "default" not in self.operating_points:
            raise ValueError("operating_points needs a 'default' entry")
        if self.task is Task.MAMMO and self.input.canonical_laterality is None:
            raise ValueError("a mammography model must state its canonical laterality")
        if self.task is Task.CHEST and self.input.canonical_laterality is not None:
            raise ValueError("a chest model has no canonical laterality")
        return self

    @property
    def model_id(self) -> str:
        """``name-version``, the identifier written into results."""
        return f"{self.name}-{self.version}"

    @property
    def file_name(self) -> str:
        return f"{self.model_id}{BUNDLE_SUFFIX}"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle held in memory."""

    manifest: Manifest
    onnx: bytes
    path: Path | None = None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(item) for item in error["loc"]) or "manifest"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate ``manifest.json`` bytes.

    Raises
    ------
    InvalidBundleError
        Not JSON, or a manifest that fails validation (the message names the fields).
    """
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidBundleError(f"bad manifest: {_summarise(exc)}") from None


def write_bundle(path: Path, manifest: Manifest, onnx: bytes) -> Path:
    """Write a bundle file atomically; byte-identical for identical inputs.

    Raises
    ------
    InvalidBundleError
        The manifest's ``onnx_sha256`` is not the checksum of ``onnx``.
    """
    if sha256_hex(onnx) != manifest.onnx_sha256:
        raise InvalidBundleError("the manifest's onnx_sha256 does not match the weights")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        text = json.dumps(manifest.model_dump(mode="json"), indent=2, ensure_ascii=False)
        for name, data in ((MANIFEST_NAME, text.encode("utf-8")), (ONNX_NAME, onnx)):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=BUNDLE_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_bundle(path: Path) -> Bundle:
    """Read a bundle and verify it: exactly the two members, a valid manifest, matching weights.

    Raises
    ------
    InvalidBundleError
        Anything wrong with the file; the message says what (never the weights themselves).
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = {info.filename: info for info in archive.infolist()}
            if set(infos) != {MANIFEST_NAME, ONNX_NAME}:
                raise InvalidBundleError(
                    f"a bundle holds exactly {MANIFEST_NAME} and {ONNX_NAME}; "
                    f"found {sorted(infos)[:10]}"
                )
            if infos[MANIFEST_NAME].file_size > MAX_MANIFEST_BYTES:
                raise InvalidBundleError("manifest.json is too large")
            if infos[ONNX_NAME].file_size > MAX_ONNX_BYTES:
                raise InvalidBundleError("model.onnx is too large")
            manifest_bytes = archive.read(MANIFEST_NAME)
            onnx = archive.read(ONNX_NAME)
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise InvalidBundleError(f"cannot read the bundle ({type(exc).__name__})") from None
    manifest = parse_manifest(manifest_bytes)
    if sha256_hex(onnx) != manifest.onnx_sha256:
        raise InvalidBundleError("model.onnx does not match the checksum in its manifest")
    return Bundle(manifest=manifest, onnx=onnx, path=path)


def install_bundle(path: Path, models_dir: Path) -> Path:
    """Verify a bundle and copy it into ``models_dir`` as ``<name>-<version>.qmodel``.

    Installing the same bundle twice is a no-op. A different bundle under a name and version
    already installed is refused: a version, once installed, never changes.

    Returns
    -------
    Path
        The installed file.

    Raises
    ------
    InvalidBundleError
        The file is not a valid bundle, or clashes with an installed one.
    """
    bundle = read_bundle(path)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / bundle.manifest.file_name
    if target.exists():
        existing = read_bundle(target)
        if existing.manifest.onnx_sha256 != bundle.manifest.onnx_sha256:
            raise InvalidBundleError(
                f"{bundle.manifest.model_id} is already installed with different weights"
            )
        return target
    fd, tmp = tempfile.mkstemp(dir=models_dir, prefix=".tmp-", suffix=BUNDLE_SUFFIX)
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def installed_bundles(models_dir: Path) -> list[tuple[Path, Manifest]]:
    """The readable bundles in ``models_dir`` (by file name); unreadable files are skipped."""
    found: list[tuple[Path, Manifest]] = []
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return found
    for candidate in sorted(models_dir.glob(f"*{BUNDLE_SUFFIX}")):
        try:
            found.append((candidate, read_bundle(candidate).manifest))
        except InvalidBundleError:
            continue
    return found
