"""``qamqor demo init`` (run by ``scripts/start`` on every start): demo users whose passwords
are printed the one time they are made, a small region, a kiosk (both databases)."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from rich.console import Console

from qamqor.demo import init_demo
from qamqor.runtime import Runtime


def run_demo_init(runtime: Runtime) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    init_demo(runtime, console=console, residents=300)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


@pytest.fixture
def demo_runtime(runtime: Runtime, tmp_path: Path) -> Runtime:
    runtime.settings.shared_data_dir = tmp_path / "no-shared-data"  # no sample images
    return runtime


def test_passwords_are_printed_once_then_only_where_they_are(demo_runtime: Runtime) -> None:
    first = run_demo_init(demo_runtime)
    credentials = demo_runtime.settings.data_dir / "demo-credentials.txt"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    secrets = [
        line.split()[1]
        for line in credentials.read_text().splitlines()
        if line.endswith(("(admin)", "(radiologist)", "(registrar)"))
    ]
    token = credentials.read_text().split("/kiosk/activate): ")[1].split()[0]
    assert len(secrets) == 3 and token
    for secret in [*secrets, token]:
        assert secret in first
    again = run_demo_init(demo_runtime)
    for secret in [*secrets, token]:
        assert secret not in again
    assert str(credentials) in again
