"""Fixtures shared by the whole suite.

Every test that takes ``runtime`` runs twice: on the embedded SQLite file and on PostgreSQL
(``QAMQOR_TEST_POSTGRES_URL``, default the local server's ``test`` database). Each PostgreSQL
test gets a schema of its own, dropped afterwards. PostgreSQL tests never skip: when no server
answers they fail, and ``scripts/test`` starts a throwaway server before the suite.

The DICOM node has two paths (``qamqor/pacs/dimse/fastpath.py``): the fast path, with the
pynetdicom release it was written for, and pynetdicom's own handlers (the plain path) with any
other. Test modules of the node mark themselves ``BOTH_PATHS``: each of their tests runs with
``QAMQOR_DICOM_FAST_PATH=auto`` (``fast``) and ``off`` (``plain``), in the test's settings and
in the environment of the servers it starts. Elsewhere the variable's value (``auto`` unless
set) is the one every node gets.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from qamqor.core.settings import Settings
from qamqor.runtime import Runtime, build_runtime

POSTGRES_URL = os.environ.get(
    "QAMQOR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SHARED_DATA = Path(os.environ.get("QAMQOR_SHARED_DATA_DIR", "../shared/data")).resolve()
DICOM_DIR = SHARED_DATA / "dicom"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


#: Runs each test of a module (``pytestmark``) on both paths of the DICOM node.
BOTH_PATHS = pytest.mark.parametrize("dicom_fast_path", ["auto", "off"], ids=["fast", "plain"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def shared_dicom_dir() -> Path:
    if not DICOM_DIR.is_dir():
        pytest.skip(f"the real DICOM files are not here ({DICOM_DIR}); see ../shared/data")
    return DICOM_DIR


@pytest.fixture
def dicom_fast_path() -> str:
    """The DICOM node's ``dicom_fast_path`` in this test (``BOTH_PATHS`` gives both)."""
    return os.environ.get("QAMQOR_DICOM_FAST_PATH", "auto")


@pytest.fixture(autouse=True)
def _dicom_path_in_the_environment(dicom_fast_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings made in the test, and servers it starts, read the path from the environment."""
    monkeypatch.setenv("QAMQOR_DICOM_FAST_PATH", dicom_fast_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'qamqor.db'}"
        return
    schema = f"qamqor_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, dicom_fast_path: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        http_port=free_port(),
        dicom_port=free_port(),
        dicom_fast_path=dicom_fast_path,
        secret_key="test-secret-key-" + "x" * 32,
        shared_data_dir=SHARED_DATA,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = build_runtime(settings)
    try:
        yield rt
    finally:
        rt.close()


@pytest.fixture
def admin_credentials(runtime: Runtime) -> tuple[str, str]:
    from qamqor.core.auth import create_user

    with runtime.session_factory() as session:
        create_user(session, username="admin", password="admin-password", role="admin")
        session.commit()
    return ("admin", "admin-password")


class LiveServer:
    def __init__(self, runtime: Runtime) -> None:
        import uvicorn

        from qamqor.web.app import create_app

        self.runtime = runtime
        self.port = runtime.settings.http_port
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(runtime),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("HTTP server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(runtime: Runtime) -> Iterator[LiveServer]:
    server = LiveServer(runtime)
    server.start()
    try:
        yield server
    finally:
        server.stop()
