"""Helpers of the pipeline tests: archive files, a pipeline with the test bundles."""

from __future__ import annotations

import io
from pathlib import Path

from ai_helpers import make_bundle
from pydicom import Dataset, dcmwrite

from qamqor.ai import Task
from qamqor.ai.pipeline import AIPipeline
from qamqor.ai.registry import ModelStore
from qamqor.pacs.parsing import parse_part10
from qamqor.runtime import Runtime


def store(runtime: Runtime, *datasets: Dataset) -> None:
    parsed = []
    for ds in datasets:
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        parsed.append(parse_part10(buffer.getvalue()))
    for result in runtime.archive.store_instances(parsed, source="test"):
        assert not isinstance(result, Exception), result


def store_files(runtime: Runtime, *paths: Path) -> None:
    parsed = [parse_part10(path.read_bytes()) for path in paths]
    for result in runtime.archive.store_instances(parsed, source="test"):
        assert not isinstance(result, Exception), result


def install_test_models(runtime: Runtime) -> Path:
    """The tiny mammography bundle, installed in the runtime's data dir (the shipped chest
    bundle is installed on first use)."""
    models_dir = runtime.settings.data_dir / "models"
    bundle = make_bundle(
        runtime.settings.data_dir / "tiny-mammo-1.2.3.qmodel", Task.MAMMO, name="tiny-mammo"
    )
    ModelStore(models_dir).install(bundle)
    return models_dir


def make_pipeline(runtime: Runtime, *, stale_seconds: float = 60.0) -> AIPipeline:
    models_dir = install_test_models(runtime)
    return AIPipeline(
        session_factory=runtime.session_factory,
        archive=runtime.archive,
        models=ModelStore(models_dir),
        queue=None,
        stale_seconds=stale_seconds,
    )
