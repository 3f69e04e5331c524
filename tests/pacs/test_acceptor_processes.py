"""``qamqor serve`` with several DICOM acceptor processes serving one listening socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.conftest import free_port

QAMQOR = str(Path(sys.executable).with_name("qamqor"))
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_associations_spread_over_processes_that_die_with_the_server(
    tmp_path: Path, database_url: str
) -> None:
    http_port, dicom_port = free_port(), free_port()
    env = {
        **os.environ,
        "QAMQOR_DATABASE_URL": database_url,
        "QAMQOR_DICOM_PROCESSES": "2",
        "QAMQOR_DICOM_ACCEPT_UNKNOWN_AES": "true",
    }
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [QAMQOR, "serve", "--data-dir", str(tmp_path / "data"), "--http-port", str(http_port),
         "--dicom-port", str(dicom_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        echo = ["echoscu", "-aec", "QAMQOR", "127.0.0.1", str(dicom_port)]
        log_path = tmp_path / "serve.log"
        while (
            "[acceptor]: DICOM node" not in log_path.read_text()
            or subprocess.run(echo, env=DCMTK_ENV, capture_output=True).returncode
        ):
            assert time.monotonic() < deadline, "qamqor serve and its acceptor did not start"
            time.sleep(0.3)
        acceptors = [
            pid for pid in _children(server.pid) if "spawn_main" in Path(
                f"/proc/{pid}/cmdline").read_text()
        ]  # fmt: skip
        assert len(acceptors) == 1

        # Sixteen senders at once, one study each: every instance is stored and indexed, and
        # the kernel hands associations to both processes (all to one: p = 2 / 2**16).
        folders = []
        template = dcmread(get_testdata_file("CT_small.dcm"))
        for sender in range(16):
            folder = tmp_path / f"sender{sender}"
            folder.mkdir()
            study, series = generate_uid(), generate_uid()
            for number in range(3):
                template.StudyInstanceUID = study
                template.SeriesInstanceUID = series
                template.SOPInstanceUID = generate_uid()
                template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
                template.InstanceNumber = number
                template.save_as(folder / f"{number}.dcm")
            folders.append(folder)

        def send(folder: Path) -> int:
            command = ["storescu", "-aec", "QAMQOR", "+sd", "127.0.0.1", str(dicom_port),
                       str(folder)]  # fmt: skip
            result = subprocess.run(command, env=DCMTK_ENV, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr[-500:]
            return result.returncode

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(send, folders)) == [0] * 16
        from sqlalchemy import func, select

        from qamqor.core.db import make_engine
        from qamqor.pacs.models import Instance, Study

        engine = make_engine(database_url)
        with engine.connect() as connection:
            counts = connection.scalars(select(Study.number_of_instances)).all()
            assert sorted(counts) == [3] * 16
            assert connection.scalar(select(func.count(Instance.id))) == 48
        engine.dispose()
        served = log_path.read_text()
        assert "pynetdicom.acse[acceptor]: Accepting Association" in served
        assert "pynetdicom.acse: Accepting Association" in served

        # kill -9 of the server takes its acceptors with it: nothing stays on the port.
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in acceptors):
            assert time.monotonic() < deadline, "an acceptor outlived the server"
            time.sleep(0.1)
        assert subprocess.run(echo, env=DCMTK_ENV, capture_output=True).returncode != 0
    finally:
        if server.poll() is None:
            server.kill()
        log.close()
