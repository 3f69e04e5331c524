"""The servers the benchmarks measure, started as child processes and always stopped.

``start_orthanc`` and ``start_qamqor`` give an empty archive on free ports of 127.0.0.1, in a
directory of the caller's, and stop the server when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import (
    BENCH_PASSWORD,
    BENCH_USER,
    HOST,
    ORTHANC_BIN,
    ORTHANC_DICOMWEB_PLUGIN,
    ORTHANC_POSTGRESQL_PLUGIN,
    QAMQOR_BIN,
    PostgresDatabase,
    c_echo,
    free_port,
    wait_until,
)


# Processes -------------------------------------------------------------------------------------
@dataclass
class ManagedProcess:
    """A server we started: its output goes to a log file in its work dir."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls, name: str, command: Sequence[str], *, env: dict[str, str], log_path: Path
    ) -> ManagedProcess:
        log = log_path.open("wb")
        try:
            process = subprocess.Popen(
                list(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl+C in the terminal reaches us, not the server
            )
        finally:
            log.close()
        return cls(name, process, log_path)

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU time the server and its live child processes (Qamqor's DICOM
        acceptor processes) have used so far (Linux ``/proc``)."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # a process that ended meanwhile
            pid = int(stat.parent.name)
            if pid == self.process.pid or int(fields[1]) == self.process.pid:
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}; last lines of its "
                f"log:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# Orthanc ---------------------------------------------------------------------------------------
@dataclass
class OrthancServer:
    process: ManagedProcess
    http_port: int
    dicom_port: int
    ae_title: str = "ORTHANC"
    auth: tuple[str, str] = (BENCH_USER, BENCH_PASSWORD)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def stow_url(self) -> str:
        return f"{self.url}/dicom-web/studies"

    def get_json(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def version(self) -> str:
        return str(self.get_json("/system")["Version"])

    def count_instances(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])


def orthanc_config(
    workdir: Path,
    *,
    http_port: int,
    dicom_port: int,
    threads: int,
    database: PostgresDatabase | None = None,
) -> dict[str, Any]:
    """Orthanc's stock settings, except what a benchmark on this machine needs; with
    ``database``, its index on PostgreSQL (the plugin's stock settings otherwise)."""
    config = _orthanc_base_config(
        workdir, http_port=http_port, dicom_port=dicom_port, threads=threads
    )
    if database is not None:
        config["Plugins"].append(str(ORTHANC_POSTGRESQL_PLUGIN))
        config["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,  # files on disk, as Qamqor keeps them
            "Host": database.host,
            "Port": database.port,
            "Database": database.name,
            "Username": database.user,
            "Password": database.password,
            "Lock": False,  # one Orthanc per database anyway; the lock only guards that
        }
    return config


def _orthanc_base_config(
    workdir: Path, *, http_port: int, dicom_port: int, threads: int
) -> dict[str, Any]:
    return {
        "Name": "qamqor-bench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        # Orthanc has no bind address for its listeners (1.10): HTTP only answers localhost,
        # and lives as long as the benchmark, on a random port.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {BENCH_USER: BENCH_PASSWORD},
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomCheckCalledAet": False,
        # Default 4: with 8 senders, 4 would wait for a free thread.
        "DicomThreadsCount": threads,
        # Nagle off on its HTTP server (its default already); the DICOM side is DCMTK's and is
        # switched by the TCP_NODELAY environment variable (see start_orthanc).
        "TcpNoDelay": True,
        "KeepAlive": True,
        "HttpThreadsCount": 50,
        "StorageCompression": False,
        "SyncStorageArea": True,  # fsync, as Qamqor does: a success status means durable
        "SaveJobs": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "StableAge": 60,
    }


@contextlib.contextmanager
def start_orthanc(
    workdir: Path, *, threads: int = 8, database: PostgresDatabase | None = None
) -> Iterator[OrthancServer]:
    """Orthanc with an empty archive in ``workdir`` (its index in ``database`` if given);
    stopped when the block ends."""
    if not ORTHANC_BIN.exists():
        raise RuntimeError(f"Orthanc is not installed ({ORTHANC_BIN}); apt-get install orthanc")
    if not ORTHANC_DICOMWEB_PLUGIN.exists():
        raise RuntimeError(f"the DICOMweb plugin is missing ({ORTHANC_DICOMWEB_PLUGIN})")
    if database is not None and not ORTHANC_POSTGRESQL_PLUGIN.exists():
        raise RuntimeError(
            f"the PostgreSQL plugin is missing ({ORTHANC_POSTGRESQL_PLUGIN}); "
            "apt-get install orthanc-postgresql"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config_path = workdir / "orthanc.json"
    config_path.write_text(
        json.dumps(
            orthanc_config(
                workdir,
                http_port=http_port,
                dicom_port=dicom_port,
                threads=threads,
                database=database,
            ),
            indent=2,
        )
    )
    env = dict(os.environ)
    # Debian's Orthanc uses the system DCMTK, which leaves Nagle's algorithm on unless this
    # variable says otherwise (DCMTK envvars.txt; Orthanc's own static builds compile it in).
    env["TCP_NODELAY"] = "1"
    process = ManagedProcess.start(
        "Orthanc", [str(ORTHANC_BIN), str(config_path)], env=env, log_path=workdir / "orthanc.log"
    )
    server = OrthancServer(process, http_port, dicom_port)
    try:

        def ready() -> bool:
            process.check_alive()
            try:
                server.version()
            except httpx.HTTPError:
                return False
            return c_echo(dicom_port, server.ae_title, timeout=2)

        wait_until(ready, timeout=60, what="Orthanc to start")
        yield server
    finally:
        process.stop()


# Qamqor ----------------------------------------------------------------------------------------
@dataclass
class QamqorServer:
    process: ManagedProcess
    http_port: int
    dicom_port: int
    data_dir: Path
    database_url: str
    ae_title: str = "QAMQOR"
    auth: tuple[str, str] = (BENCH_USER, BENCH_PASSWORD)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def stow_url(self) -> str:
        return f"{self.url}/dicom-web/studies"

    def count_instances(self) -> int:
        """Rows in the instance index, read straight from the database."""
        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return int(
                    connection.execute(sa.text("SELECT count(*) FROM pacs_instances")).scalar_one()
                )
        finally:
            engine.dispose()


def qamqor_env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QAMQOR_")}
    env["QAMQOR_DATA_DIR"] = str(data_dir)
    env["QAMQOR_DICOM_ACCEPT_UNKNOWN_AES"] = "true"
    env["QAMQOR_DICOM_HOST"] = HOST
    # Every sender runs on this machine: all the associations come from one address.
    env["QAMQOR_DICOM_MAX_ASSOCIATIONS_PER_PEER"] = "64"
    env["QAMQOR_HTTP_HOST"] = HOST
    if database_url:
        env["QAMQOR_DATABASE_URL"] = database_url
    return env


def qamqor_add_user(env: dict[str, str], username: str, password: str, role: str) -> None:
    """``qamqor users add ... --password-stdin`` (also creates and migrates a new database)."""
    result = subprocess.run(
        [str(QAMQOR_BIN), "users", "add", username, "--role", role, "--password-stdin"],
        input=f"{password}\n".encode(),
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"qamqor users add failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )


@contextlib.contextmanager
def start_qamqor(
    workdir: Path,
    *,
    database_url: str | None = None,
    user_role: str = "admin",
    settings: Mapping[str, str] | None = None,
) -> Iterator[QamqorServer]:
    """``qamqor serve`` on a data dir in ``workdir`` (and ``database_url`` when given).

    A user ``bench`` with ``user_role`` is created first, through the CLI, for HTTP Basic auth.
    ``settings``: more ``QAMQOR_*`` variables for the server.
    """
    if not QAMQOR_BIN.exists():
        raise RuntimeError(f"{QAMQOR_BIN} is missing: install Qamqor in .venv first")
    data_dir = workdir / "qamqor-data"
    env = qamqor_env(data_dir, database_url)
    env.update(settings or {})
    qamqor_add_user(env, BENCH_USER, BENCH_PASSWORD, user_role)
    http_port, dicom_port = free_port(), free_port()
    process = ManagedProcess.start(
        "qamqor serve",
        [
            str(QAMQOR_BIN),
            "serve",
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http_port),
            "--dicom-port",
            str(dicom_port),
        ],
        env=env,
        log_path=workdir / "qamqor.log",
    )
    effective_url = database_url or f"sqlite:///{(data_dir / 'qamqor.db').resolve()}"
    server = QamqorServer(process, http_port, dicom_port, data_dir, effective_url)
    try:

        def ready() -> bool:
            process.check_alive()
            try:
                if httpx.get(f"{server.url}/health", timeout=5).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
            return c_echo(dicom_port, server.ae_title, timeout=2)

        wait_until(ready, timeout=120, what="qamqor serve to start")
        yield server
    finally:
        process.stop()
