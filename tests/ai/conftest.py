"""Fixtures of the AI tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from ai_helpers import make_bundle

from qamqor.ai import Task


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    path: Path = make_bundle(tmp_path / "tiny-test-1.2.3.qmodel")
    return path


@pytest.fixture
def tiny_mammo_bundle(tmp_path: Path) -> Path:
    path: Path = make_bundle(tmp_path / "tiny-mammo.qmodel", Task.MAMMO, name="tiny-mammo")
    return path
