"""``qamqor analyze`` and ``qamqor models`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


def test_reanalyse_queues_studies_for_the_workers(tmp_path: Path, shared_dicom_dir: Path) -> None:
    """`qamqor reanalyse` (after a new model, say) puts the study on the queue that `qamqor
    worker` and `qamqor serve` run, and the worker analyses it again."""
    from pydicom import dcmread
    from sqlalchemy import select

    from qamqor.ai.models import AIStudy
    from qamqor.core.settings import Settings
    from qamqor.runtime import build_runtime

    data_dir = tmp_path / "data"
    film = shared_dicom_dir / "RG1_J2KI.dcm"
    uid = str(dcmread(film, stop_before_pixels=True).StudyInstanceUID)
    imported = run(["import", str(film)], data_dir)
    assert imported.returncode == 0, imported.stderr

    nothing = run(["reanalyse"], data_dir)
    assert nothing.returncode == 2 and "--failed" in nothing.stderr
    unknown = run(["reanalyse", uid, "1.2.826.0.1.3680043.8.498.1"], data_dir)
    assert unknown.returncode == 1
    assert "1.2.826.0.1.3680043.8.498.1: no such study" in unknown.stderr
    assert "Queued for analysis again: 1" in unknown.stderr

    runtime = build_runtime(Settings(data_dir=data_dir), recover=False)

    def row() -> AIStudy | None:
        with runtime.session_factory() as session:
            return session.scalar(select(AIStudy).where(AIStudy.study_instance_uid == uid))

    try:
        queued = row()
        assert queued is not None and queued.status == "queued"
        env = {**os.environ, "QAMQOR_DATA_DIR": str(data_dir)}
        worker = subprocess.Popen(
            [QAMQOR, "worker", "--workers", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            done = row()
            while time.monotonic() < deadline and (done is None or done.status != "done"):
                time.sleep(0.5)
                done = row()
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        assert done is not None and done.status == "done", done and done.reason
        assert done.task == "chest" and done.score is not None
        # A second request for the same images queues it again (the first was not a no-op).
        again = run(["reanalyse", "--not-analysed", uid], data_dir)
        assert again.returncode == 0 and "Queued for analysis again: 1" in again.stderr
        requeued = row()
        assert requeued is not None and requeued.status == "queued"
    finally:
        runtime.close()
