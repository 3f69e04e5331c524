"""Helpers for the AI tests: a tiny hand-made bundle, and where the real data and bundles live."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from qamqor.ai import (
    Calibration,
    FindingSpec,
    InputSpec,
    Manifest,
    OperatingPoint,
    Task,
    write_bundle,
)
from qamqor.ai.bundle import OutputSpec, sha256_hex

REPO = Path(__file__).resolve().parents[2]
MODELS_DIR = REPO / "models"
SHARED_DATA = Path(os.environ.get("QAMQOR_SHARED_DATA_DIR", "../shared/data")).resolve()

# A one-node ONNX graph: MaxPool(kernel 3, stride 4, pads 1) from "image" [1, 1, h, w] to
# "heatmap": cell (i, j) is the brightest standardised pixel around (4j, 4i). Made with
#   onnx.helper.make_node("MaxPool", ["image"], ["heatmap"], kernel_shape=[3, 3],
#                         strides=[4, 4], pads=[1, 1, 1, 1]), opset 17, ir_version 8
TINY_ONNX = base64.b64decode(
    "CAgSDHFhbXFvci10ZXN0czqnAQpVCgVpbWFnZRIHaGVhdG1hcCIHTWF4UG9vbCoVCgxrZXJuZWxfc2hhcGVAA0AD"
    "oAEHKhEKBHBhZHNAAUABQAFAAaABByoQCgdzdHJpZGVzQARABKABBxIEdGlueVohCgVpbWFnZRIYChYIARISCgIIAQoC"
    "CAEKAxIBaAoDEgF3YiUKB2hlYXRtYXASGgoYCAESFAoCCAEKAggBCgQSAmNoCgQSAmN3QgQKABAR"
)


def manifest_fields(task: Task = Task.CHEST, onnx: bytes = TINY_ONNX) -> dict[str, Any]:
    """Keyword arguments of a valid manifest for ``onnx``."""
    return {
        "name": "tiny-test",
        "version": "1.2.3",
        "task": task,
        "labels": ["bright spot"],
        "input": InputSpec(
            pixel_spacing_mm=1.0,
            reference_size=128,
            max_size=512,
            normalization="zscore",
            size_multiple=8,
            canonical_laterality="R" if task is Task.MAMMO else None,
        ),
        "output": OutputSpec(stride=4),
        "calibration": Calibration(slope=1.0, intercept=-3.0),
        "findings": FindingSpec(min_distance_mm=10.0, max_findings=3, min_score=0.0),
        "operating_points": {
            "default": OperatingPoint(threshold=0.5, specificity=0.9, sensitivity=0.5)
        },
        "intended_use": "Tests of the bundle format and of the analyser only.",
        "training_data": "None: a max-pooling graph.",
        "validation": {"auc": 0.5, "method": "none"},
        "license": "Apache-2.0",
        "created": datetime(2024, 1, 1, tzinfo=UTC),
        "onnx_sha256": sha256_hex(onnx),
    }


def make_bundle(path: Path, task: Task = Task.CHEST, **changes: Any) -> Path:
    fields = manifest_fields(task)
    fields.update(changes)
    return write_bundle(path, Manifest(**fields), TINY_ONNX)


def shipped_bundle(prefix: str) -> Path:
    found = sorted(MODELS_DIR.glob(f"{prefix}-[0-9]*.qmodel"))
    if not found:
        pytest.skip(f"no shipped {prefix} bundle in {MODELS_DIR}")
    return found[-1]


def shared_data(sub: str) -> Path:
    folder = SHARED_DATA / sub
    if not folder.is_dir():
        pytest.skip(f"the real data are not here ({folder}); see ../shared/data")
    return folder
