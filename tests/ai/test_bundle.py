"""The model bundle: a manifest that refuses bad values, verified reading, installing."""

from __future__ import annotations

import json
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from ai_helpers import TINY_ONNX, make_bundle, manifest_fields
from pydantic import ValidationError

from qamqor.ai import (
    InvalidBundleError,
    Manifest,
    OperatingPoint,
    Task,
    install_bundle,
    installed_bundles,
    read_bundle,
    write_bundle,
)
from qamqor.ai.bundle import InputSpec


def test_round_trip(tiny_bundle: Path) -> None:
    bundle = read_bundle(tiny_bundle)
    assert bundle.onnx == TINY_ONNX
    assert bundle.manifest.model_id == "tiny-test-1.2.3"
    assert bundle.manifest.file_name == "tiny-test-1.2.3.qmodel"
    assert bundle.manifest.task is Task.CHEST
    with zipfile.ZipFile(tiny_bundle) as archive:
        assert sorted(archive.namelist()) == ["manifest.json", "model.onnx"]


def test_writing_is_reproducible(tmp_path: Path) -> None:
    first = make_bundle(tmp_path / "a.qmodel")
    second = make_bundle(tmp_path / "b.qmodel")
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "Tiny Test"),
        ("name", "x"),
        ("version", "1.2"),
        ("version", "v1.2.3"),
        ("task", "ct"),
        ("labels", []),
        ("labels", ["a", "a"]),
        ("intended_use", "short"),
        ("onnx_sha256", "0" * 63),
        ("created", datetime(2024, 1, 1)),
        ("validation", {"auc": float("nan")}),
        ("operating_points", {}),
        (
            "operating_points",
            {"default": {"threshold": 1.5, "specificity": 0.9, "sensitivity": 0.5}},
        ),
    ],
)
def test_manifest_refuses_bad_values(field: str, value: object) -> None:
    fields = manifest_fields()
    fields[field] = value
    with pytest.raises(ValidationError):
        Manifest(**fields)


def test_manifest_refuses_unknown_fields_and_inconsistent_laterality() -> None:
    with pytest.raises(ValidationError):
        Manifest(**manifest_fields(), surprise=1)  # type: ignore[call-arg]
    mammo = manifest_fields(Task.MAMMO)
    mammo["input"] = InputSpec(
        pixel_spacing_mm=1, reference_size=64, normalization="zscore", size_multiple=8
    )
    with pytest.raises(ValidationError, match="laterality"):
        Manifest(**mammo)
    chest = manifest_fields(Task.CHEST)
    chest["input"] = InputSpec(
        pixel_spacing_mm=1,
        reference_size=64,
        normalization="zscore",
        size_multiple=8,
        canonical_laterality="R",
    )
    with pytest.raises(ValidationError, match="laterality"):
        Manifest(**chest)
    with pytest.raises(ValidationError):
        OperatingPoint(threshold=0.5, specificity=-0.1, sensitivity=0.5)


def test_write_refuses_weights_that_do_not_match(tmp_path: Path) -> None:
    manifest = Manifest(**manifest_fields())
    with pytest.raises(InvalidBundleError, match="onnx_sha256"):
        write_bundle(tmp_path / "x.qmodel", manifest, TINY_ONNX + b"\0")
    assert not list(tmp_path.iterdir())


def _rewrite(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_read_refuses_tampered_weights(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = zipfile.ZipFile(tiny_bundle).read("manifest.json")
    bad = _rewrite(
        tmp_path / "bad.qmodel", {"manifest.json": manifest, "model.onnx": TINY_ONNX + b"x"}
    )
    with pytest.raises(InvalidBundleError, match="checksum"):
        read_bundle(bad)


def test_read_refuses_bad_files(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = zipfile.ZipFile(tiny_bundle).read("manifest.json")
    extra = _rewrite(
        tmp_path / "extra.qmodel",
        {"manifest.json": manifest, "model.onnx": TINY_ONNX, "run.sh": b"echo"},
    )
    with pytest.raises(InvalidBundleError, match="exactly"):
        read_bundle(extra)
    data = json.loads(manifest)
    data["version"] = "latest"
    bad_manifest = _rewrite(
        tmp_path / "bad-manifest.qmodel",
        {"manifest.json": json.dumps(data).encode(), "model.onnx": TINY_ONNX},
    )
    with pytest.raises(InvalidBundleError, match="version"):
        read_bundle(bad_manifest)
    not_json = _rewrite(
        tmp_path / "not-json.qmodel", {"manifest.json": b"{", "model.onnx": TINY_ONNX}
    )
    with pytest.raises(InvalidBundleError, match="bad manifest"):
        read_bundle(not_json)
    garbage = tmp_path / "garbage.qmodel"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(InvalidBundleError, match="cannot read"):
        read_bundle(garbage)
    with pytest.raises(InvalidBundleError, match="cannot read"):
        read_bundle(tmp_path / "missing.qmodel")


def test_install(tiny_bundle: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    installed = install_bundle(tiny_bundle, models)
    assert installed == models / "tiny-test-1.2.3.qmodel"
    assert install_bundle(tiny_bundle, models) == installed  # idempotent
    (models / "junk.qmodel").write_bytes(b"junk")
    assert [manifest.model_id for _, manifest in installed_bundles(models)] == ["tiny-test-1.2.3"]

    # the same name and version with other weights is refused: a version never changes
    other_onnx = TINY_ONNX.replace(b"qamqor-tests", b"qamqor-other")
    fields = manifest_fields(onnx=other_onnx)
    clash = write_bundle(tmp_path / "clash.qmodel", Manifest(**fields), other_onnx)
    with pytest.raises(InvalidBundleError, match="already installed"):
        install_bundle(clash, models)
    assert read_bundle(installed).onnx == TINY_ONNX
    assert installed_bundles(tmp_path / "nowhere") == []
