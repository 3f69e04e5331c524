from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

from qamqor.runtime import Runtime
from qamqor.web.app import create_app


def test_health_needs_no_login_and_reports_storage(runtime: Runtime) -> None:
    client = TestClient(create_app(runtime))
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"

    shutil.rmtree(runtime.settings.storage_dir)
    broken = client.get("/health")
    assert broken.status_code == 503
    assert "storage" in broken.json()["problems"][0]


def test_apis_are_not_anonymous(runtime: Runtime) -> None:
    client = TestClient(create_app(runtime))
    response = client.get("/dicom-web/studies")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")
