"""``scripts/start`` says what it does before each step (it was silent for the minute and a
half of the first pip install). Run on a copy with stand-ins for pip, apt and qamqor."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stand_in(path: Path, text: str) -> None:
    path.write_text(f"#!/usr/bin/env bash\n{text}\n")
    path.chmod(0o755)


def test_start_says_what_it_is_doing_before_each_step(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    for name in ("start", "lib.sh"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    stand_in(venv / "python", 'echo "(python $*)"')
    stand_in(venv / "pip", 'echo "(pip $*)"')
    stand_in(venv / "qamqor", 'echo "(qamqor $*)"')
    tools = tmp_path / "tools"
    tools.mkdir()
    stand_in(tools / "dpkg-query", 'echo "install ok installed"')
    environment = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    environment.pop("QAMQOR_DATA_DIR", None)
    done = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "start")],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()

    def before(command: str) -> str:
        index = next(i for i, line in enumerate(lines) if line.startswith(command))
        said = [line for line in lines[:index] if line.startswith("==> ")]
        assert said, f"nothing said before {command}: {lines}"
        return said[-1]

    assert "Python packages" in before("(pip install")
    assert "database" in before("(qamqor db upgrade")
    assert "demo" in before("(qamqor demo init")
    assert "http://127.0.0.1:8042" in before("(qamqor serve")
