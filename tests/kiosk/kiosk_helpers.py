"""Helpers of the kiosk tests: a device at the region's polyclinic and a signed-in client."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from qamqor.core.db import write_session
from qamqor.kiosk.router import DEVICE_COOKIE
from qamqor.kiosk.service import add_device
from qamqor.runtime import Runtime
from qamqor.web.app import create_app
from tests.registry.region import Region


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def add_kiosk(runtime: Runtime, facility_id: int, name: str = "kiosk-p1") -> str:
    with write_session(runtime.session_factory) as session:
        return add_device(session, name=name, facility_id=facility_id)


def kiosk_client(runtime: Runtime, region: Region, name: str = "kiosk-p1") -> TestClient:
    client = TestClient(create_app(runtime))
    client.cookies.set(DEVICE_COOKIE, add_kiosk(runtime, region.polyclinic_id, name))
    return client


def post(client: TestClient, path: str, data: dict[str, str], page: str = "/kiosk"):
    token = csrf_of(client.get(page).text)
    return client.post(path, data={**data, "csrf_token": token}, follow_redirects=True)


def sign_in(client: TestClient, iin: str) -> str:
    code_page = post(client, "/kiosk/identify", {"iin": iin})
    assert code_page.status_code == 200, code_page.text
    code = re.search(r"data-demo-code>(\d{6})<", code_page.text)
    assert code, "demo mode shows the code"
    home = post(client, "/kiosk/verify", {"code": code.group(1)}, "/kiosk/code")
    assert home.url.path == "/kiosk/home"
    return home.text
