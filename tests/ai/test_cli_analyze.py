"""``qamqor analyze`` and ``qamqor models`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from ai_helpers import MODELS_DIR, make_bundle
from dicom_factory import mammogram, save, spot_image
from PIL import Image

from qamqor.ai import Task

QAMQOR = str(Path(sys.executable).with_name("qamqor"))


def run(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QAMQOR_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    return subprocess.run([QAMQOR, *args], capture_output=True, text=True, env=env, timeout=300)


def test_analyze_real_files_pngs_and_bad_input(tmp_path: Path, shared_dicom_dir: Path) -> None:
    data_dir = tmp_path / "data"
    mammo_bundle = make_bundle(tmp_path / "tiny-mammo-1.2.3.qmodel", Task.MAMMO, name="tiny-mammo")
    installed = run(["models", "install", str(mammo_bundle)], data_dir)
    assert installed.returncode == 0, installed.stderr
    png = tmp_path / "chest.png"
    Image.fromarray((spot_image((300, 280), 200, 90) * 255).astype(np.uint8)).save(png)
    left = save(
        mammogram(spot_image((320, 240), 180, 200), laterality="L", PatientOrientation=["P", "L"]),
        tmp_path / "left.dcm",
    )
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 10)
    paths = [
        shared_dicom_dir / "MG1_J2KI.dcm",
        broken,
        shared_dicom_dir / "RG1_J2KI.dcm",
        shared_dicom_dir / "CT1_J2KI.dcm",
        png,
        left,
    ]
    result = run(["analyze", *map(str, paths)], data_dir)
    assert result.returncode == 1  # some inputs could not be analysed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_path = {Path(line["path"]).name: line for line in lines}
    assert set(by_path) == {"MG1_J2KI.dcm", "RG1_J2KI.dcm", "chest.png", "left.dcm"}
    for line in lines:
        assert set(line) == {"path", "task", "score", "findings", "model"}
        assert 0 <= line["score"] <= 1
        assert line["findings"] and line["findings"][0]["score"] == line["score"]
    mg = by_path["MG1_J2KI.dcm"]
    assert (mg["task"], mg["model"]) == ("mammo", "tiny-mammo-1.2.3")
    assert all(0 <= f["x"] < 3064 and 0 <= f["y"] < 4664 for f in mg["findings"])
    shipped_chest = sorted(MODELS_DIR.glob("chest-nodule-[0-9]*.qmodel"))
    if shipped_chest:  # the shipped bundle, installed
        assert by_path["RG1_J2KI.dcm"]["model"] == shipped_chest[-1].stem
    chest_png = by_path["chest.png"]
    assert chest_png["task"] == "chest"
    # the spot in the left breast, stored mirrored: found where it is in the file's pixels
    top = by_path["left.dcm"]["findings"][0]
    assert abs(top["x"] - 180) <= 6 and abs(top["y"] - 200) <= 6
    assert "broken.dcm: not a readable image" in result.stderr
    assert "CT1_J2KI.dcm: not analysed: not a projection radiograph (modality CT)" in result.stderr

    forced = run(["analyze", "--task", "mammo", str(png)], data_dir)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["task"] == "mammo"


def test_models_list_install_activate(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = make_bundle(tmp_path / "a.qmodel", Task.MAMMO, name="tiny-mammo", version="1.0.0")
    second = make_bundle(tmp_path / "b.qmodel", Task.MAMMO, name="tiny-mammo", version="1.1.0")
    for bundle in (first, second):
        assert run(["models", "install", str(bundle)], data_dir).returncode == 0
    listed = run(["models", "list"], data_dir)
    assert listed.returncode == 0, listed.stderr
    marks = {line[2:].split()[0]: line[0] for line in listed.stdout.splitlines()}
    assert marks["tiny-mammo-1.1.0"] == "*" and marks["tiny-mammo-1.0.0"] == " "
    if any(MODELS_DIR.glob("chest-nodule-*.qmodel")):
        assert any(name.startswith("chest-nodule-") for name in marks)  # shipped, installed
    assert run(["models", "activate", "tiny-mammo-1.0.0"], data_dir).returncode == 0
    listed = run(["models", "list"], data_dir).stdout
    assert "* tiny-mammo-1.0.0" in listed
    missing = run(["models", "activate", "no-such-model"], data_dir)
    assert missing.returncode == 2 and "no installed model" in missing.stderr
    junk = tmp_path / "junk.qmodel"
    junk.write_bytes(b"not a zip")
    refused = run(["models", "install", str(junk)], data_dir)
    assert refused.returncode == 2 and "cannot read the bundle" in refused.stderr
