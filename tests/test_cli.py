"""The ``qamqor`` command as a user runs it (a real subprocess, a fresh data directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pydicom.data import get_testdata_file

QAMQOR = str(Path(sys.executable).with_name("qamqor"))


def run(args: list[str], data_dir: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "QAMQOR_DATA_DIR": str(data_dir), "COLUMNS": "200"}
    return subprocess.run(
        [QAMQOR, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120
    )


def test_import_reports_stored_present_and_rejected_with_reasons(tmp_path: Path) -> None:
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "in" / "mr.dcm")
    (folder / "notes.txt").write_text("not an image")
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) // 2])

    data_dir = tmp_path / "data"  # does not exist: the first command creates the database
    first = run(["import", str(tmp_path / "in")], data_dir)
    assert first.returncode == 1, first.stderr  # some files were rejected
    assert "4 files: 2 stored, 0 already present, 2 rejected" in first.stderr
    assert "notes.txt: not a DICOM file" in first.stderr
    assert "cut.dcm: truncated DICOM file" in first.stderr

    again = run(["import", str(tmp_path / "in" / "mr.dcm")], data_dir)
    assert again.returncode == 0, again.stderr
    assert "1 files: 0 stored, 1 already present, 0 rejected" in again.stderr

    missing = run(["import", str(tmp_path / "nowhere")], data_dir)
    assert missing.returncode == 2
    assert "No such file or folder" in missing.stderr


def _with_vr(data: bytes, element: bytes, vr: bytes) -> bytes:
    """``data`` with the VR of its first explicit VR ``element`` (tag bytes) replaced."""
    at = data.index(element)
    return data[: at + 4] + vr + data[at + 6 :]


def test_import_goes_through_every_file_and_leaves_nothing_staged(
    tmp_path: Path, shared_dicom_dir: Path
) -> None:
    """Every file is stored, already present or rejected with its reason; a file whose
    Modality has an unknown VR neither stops the import nor leaves a file in staging."""
    folder = tmp_path / "in"
    folder.mkdir()
    good = sorted(shared_dicom_dir.glob("*.dcm"))
    for path in good:
        shutil.copy(path, folder / path.name)
    ct = good[0].read_bytes()
    shutil.copy(good[0], folder / "again.dcm")  # the same instance twice
    (folder / "a-unknown-vr.dcm").write_bytes(_with_vr(ct, b"\x08\x00\x60\x00CS", b"ZZ"))
    (folder / "b-cut.dcm").write_bytes(ct[:5000])
    zeros = ct[: ct.index(b"\x08\x00")] + bytes(1 << 20)  # a file meta header, then zeros
    (folder / "c-zeros.dcm").write_bytes(zeros)
    rows = ct.index(b"\x28\x00\x10\x00US\x02\x00")
    (folder / "d-short-rows.dcm").write_bytes(ct[: rows + 6] + b"\x03\x00" + ct[rows + 8 :])
    (folder / "e-notes.txt").write_text("not an image")
    report = tmp_path / "report.txt"

    result = run(["import", str(folder), "--report", str(report)], tmp_path / "data")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "Importing" in result.stderr  # the progress bar
    summary = f"{len(good) + 6} files: {len(good)} stored, 1 already present, 5 rejected"
    assert summary in result.stderr
    reasons = {
        "a-unknown-vr.dcm": "element (0008,0060) at byte",
        "b-cut.dcm": "truncated",
        "c-zeros.dcm": "(0000,0000)",
        "d-short-rows.dcm": "(0028,0010) has 3 bytes",
        "e-notes.txt": "not a DICOM file",
    }
    written = report.read_text()
    assert summary in written
    for name, reason in reasons.items():
        (line,) = [line for line in written.splitlines() if f"{name}: " in line]
        assert line.startswith("rejected ") and reason in line, line
        assert f"{name}: " in result.stderr.replace("\n", " ")
    staging = tmp_path / "data" / "storage" / "tmp"
    assert staging.is_dir() and not list(staging.iterdir())


def test_patient_data_stays_out_of_the_output(tmp_path: Path) -> None:
    from pydicom import dcmread

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "SECRET^PATIENT"
    ds.PatientID = "870101300123"
    del ds.SeriesInstanceUID  # rejected: the reason names the attribute, not the patient
    ds.save_as(tmp_path / "bad.dcm")
    result = run(["import", str(tmp_path / "bad.dcm")], tmp_path / "data")
    assert "SeriesInstanceUID is missing" in result.stderr
    assert "SECRET" not in result.stderr + result.stdout
    assert "870101300123" not in result.stderr + result.stdout


def test_db_upgrade_and_users(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert run(["db", "upgrade"], data_dir).returncode == 0
    added = run(
        ["users", "add", "dana", "--role", "radiologist", "--password-stdin"],
        data_dir,
        stdin="a-long-password\n",
    )
    assert added.returncode == 0, added.stderr
    duplicate = run(
        ["users", "add", "dana", "--role", "radiologist", "--password-stdin"],
        data_dir,
        stdin="a-long-password\n",
    )
    assert duplicate.returncode == 2 and "exists already" in duplicate.stderr
    bad_role = run(
        ["users", "add", "eve", "--role", "wizard", "--password-stdin"],
        data_dir,
        stdin="a-long-password\n",
    )
    assert bad_role.returncode == 2 and "unknown role" in bad_role.stderr
    token = run(["users", "token", "dana"], data_dir)
    assert token.returncode == 0 and token.stdout.strip().startswith("qmq_")


def test_a_crash_shows_no_local_variables(tmp_path: Path) -> None:
    # A database URL that cannot work makes the command fail with a traceback.
    env = {
        **os.environ,
        "QAMQOR_DATA_DIR": str(tmp_path),
        "COLUMNS": "200",
        "QAMQOR_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    result = subprocess.run([QAMQOR, "db", "upgrade"], capture_output=True, text=True, env=env,
                            timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert "locals" not in result.stderr.lower()
    assert "╭─ locals ─" not in result.stderr


def test_disabling_a_user_signs_them_out_everywhere(tmp_path: Path) -> None:
    """Someone leaves: `qamqor users disable` ends their browser sessions and tokens at once."""
    import re

    from fastapi.testclient import TestClient

    from qamqor.core.settings import Settings
    from qamqor.runtime import build_runtime
    from qamqor.web.app import create_app

    data_dir = tmp_path / "data"
    password = "a-long-password"
    added = run(
        ["users", "add", "dana", "--role", "radiologist", "--password-stdin"],
        data_dir,
        stdin=password + "\n",
    )
    assert added.returncode == 0, added.stderr
    token = run(["users", "token", "dana"], data_dir).stdout.strip()
    runtime = build_runtime(Settings(data_dir=data_dir), recover=False)
    try:
        browser = TestClient(create_app(runtime))

        def sign_in() -> int:
            form = browser.get("/login").text
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
            assert csrf
            answer = browser.post(
                "/login",
                data={"username": "dana", "password": password, "csrf_token": csrf.group(1)},
                follow_redirects=False,
            )
            return answer.status_code

        def signed_in() -> bool:
            return browser.get("/studies", follow_redirects=False).status_code == 200

        def token_works() -> bool:
            answer = browser.get("/api/ai/studies", headers={"Authorization": f"Bearer {token}"})
            return answer.status_code == 200

        assert sign_in() == 303 and signed_in() and token_works()
        signed_out = run(["users", "sign-out", "dana"], data_dir)
        assert signed_out.returncode == 0 and "2 session(s) and token(s) ended" in signed_out.stderr
        assert not signed_in() and not token_works()
        assert sign_in() == 303 and signed_in()  # they may sign in again

        disabled = run(["users", "disable", "dana"], data_dir)
        assert disabled.returncode == 0, disabled.stderr
        assert not signed_in()
        assert sign_in() == 200  # the form again: wrong username or password
        assert run(["users", "enable", "dana"], data_dir).returncode == 0
        assert sign_in() == 303 and signed_in()
        assert run(["users", "disable", "nobody"], data_dir).returncode == 2
    finally:
        runtime.close()


def test_users_add_drops_spaces_around_the_name_and_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    added = run(
        ["users", "add", " dana ", "--role", "radiologist", "--password-stdin"],
        data_dir,
        stdin="a-long-password\n",
    )
    assert added.returncode == 0, added.stderr
    assert "User dana added" in added.stderr  # the console writes to stderr
    assert run(["users", "token", "dana"], data_dir).returncode == 0
    assert run(["users", "token", "dana "], data_dir).returncode == 2  # exact, as sign-in is
