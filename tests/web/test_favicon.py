"""``/favicon.ico`` is there (browsers ask for it on every page; it answered 404), and every
page links the icon."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from qamqor.runtime import Runtime
from qamqor.web.app import create_app
from tests.kiosk.kiosk_helpers import add_kiosk
from tests.registry.region import build_region


def test_the_favicon_is_served_and_linked(runtime: Runtime) -> None:
    client = TestClient(create_app(runtime))
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/x-icon"
    assert icon.content.startswith(b"\x00\x00\x01\x00")  # an ICO file
    assert icon.headers["cache-control"].startswith("public")

    region = build_region(runtime)
    from qamqor.kiosk.router import DEVICE_COOKIE

    client.cookies.set(DEVICE_COOKIE, add_kiosk(runtime, region.polyclinic_id))
    for path in ("/login", "/kiosk", "/kiosk/hall"):
        page = client.get(path)
        assert page.status_code == 200, path
        links = re.findall(r'<link rel="icon" href="([^"]+)"', page.text)
        assert "/favicon.ico" in links, path
        for link in links:
            answer = client.get(link)
            assert answer.status_code == 200 and answer.content, (path, link)
