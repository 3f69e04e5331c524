"""Each role lands on a page it can use, and the top bar offers only what the role may open
(the registrar once signed in to a 403 page, with 'Studies' in the bar, also 403)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qamqor.core.auth import Role, create_user
from qamqor.runtime import Runtime
from qamqor.web.app import create_app
from tests.conftest import ARTIFACTS, LiveServer

PASSWORD = "correct horse battery"
NAV = re.compile(r'<nav class="mainnav"[^>]*>(.*?)</nav>', re.DOTALL)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def signed_in_client(runtime: Runtime, role: Role) -> TestClient:
    with runtime.session_factory() as session:
        create_user(session, username=f"demo-{role}", password=PASSWORD, role=role)
        session.commit()
    client = TestClient(create_app(runtime))
    form = client.get("/login")
    client.post(
        "/login",
        data={"username": f"demo-{role}", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    return client


def nav_links(html: str) -> list[str]:
    found = NAV.search(html)
    return re.findall(r'href="([^"]+)"', found.group(1)) if found else []


@pytest.mark.parametrize("role", list(Role))
def test_every_role_lands_on_a_page_it_can_use(runtime: Runtime, role: Role) -> None:
    client = signed_in_client(runtime, role)
    landed = client.get("/")  # where signing in without a "next" ends
    assert landed.status_code == 200, (role, landed.url)
    assert client.get("/login").status_code == 200
    # Every page the top bar offers opens.
    for link in nav_links(landed.text):
        assert client.get(link).status_code == 200, (role, link)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_navigation_follows_the_routes_roles(runtime: Runtime) -> None:
    from qamqor.http import navigation

    app = create_app(runtime)
    expected = {
        Role.ADMIN: ["/studies", "/reading"],
        Role.RADIOLOGIST: ["/studies", "/reading"],
        Role.TECHNOLOGIST: ["/studies"],
        Role.REGISTRAR: [],
        Role.OPERATOR: [],
        Role.HEAD: [],
        Role.SERVICE: [],
        Role.KIOSK: [],
    }
    for role, pages in expected.items():
        assert [p.path for p in navigation.pages_for(app, role)] == pages, role
    services = {role: [p.path for p in navigation.services_for(app, role)] for role in Role}
    assert services[Role.REGISTRAR] == ["/fhir", "/api/queue"]
    assert services[Role.HEAD] == ["/reading/api/agreement"]
    assert (
        "/dicom-web" in services[Role.TECHNOLOGIST] and "/fhir" not in services[Role.TECHNOLOGIST]
    )
    assert services[Role.KIOSK] == []
    assert navigation.landing(app, Role.RADIOLOGIST) == "/studies"
    assert navigation.landing(app, Role.REGISTRAR) == "/"
    assert navigation.destination(app, Role.REGISTRAR, "/studies?page=2") == "/"
    assert navigation.destination(app, Role.TECHNOLOGIST, "/studies?page=2") == "/studies?page=2"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_registrar_signs_in_to_the_home_page_without_studies(runtime: Runtime) -> None:
    client = signed_in_client(runtime, Role.REGISTRAR)
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 200
    assert nav_links(home.text) == []  # no "Studies" (403) in the bar
    assert 'href="/studies"' not in home.text
    assert "Тіркеуші" in home.text  # "Registrar", in Kazakh first
    assert "/fhir" in home.text and "/api/queue" in home.text
    # Signing in again with the login form's default next (the studies) ends at home too.
    client.cookies.clear()
    form = client.get("/login")
    assert 'name="next" value="/studies"' in form.text
    signed = client.post(
        "/login",
        data={
            "username": "demo-registrar",
            "password": PASSWORD,
            "next": "/studies",
            "csrf_token": csrf_of(form.text),
        },
        follow_redirects=False,
    )
    assert signed.headers["location"] == "/"
    # Asked for on purpose, the studies still answer 403, with a way back home.
    denied = client.get("/studies")
    assert denied.status_code == 403 and 'href="/"' in denied.text
    assert nav_links(denied.text) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_radiologist_sees_reading_and_studies_and_a_technologist_only_studies(
    runtime: Runtime,
) -> None:
    radiologist = signed_in_client(runtime, Role.RADIOLOGIST)
    assert nav_links(radiologist.get("/studies").text) == ["/studies", "/reading"]
    technologist = signed_in_client(runtime, Role.TECHNOLOGIST)
    assert nav_links(technologist.get("/studies").text) == ["/studies"]


CHROMIUM = Path(os.environ.get("QAMQOR_TEST_CHROMIUM", "/usr/bin/chromium"))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_in_a_browser_each_role_signs_in_to_its_page(live_server: LiveServer) -> None:
    """chromium signs in as a registrar (home page, no 'Studies'), then as a radiographer
    (studies, only 'Studies' in the bar); screenshots in kk, ru, en in test-artifacts/."""
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
    runtime = live_server.runtime
    with runtime.session_factory() as session:
        for role in (Role.REGISTRAR, Role.TECHNOLOGIST):
            create_user(session, username=f"demo-{role}", password=PASSWORD, role=role)
        session.commit()
    ARTIFACTS.mkdir(exist_ok=True)
    names = {"kk": "Қазақша", "ru": "Русский", "en": "English"}
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            for role, landing in ((Role.REGISTRAR, "/"), (Role.TECHNOLOGIST, "/studies")):
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(15_000)
                page.goto(f"{live_server.url}/login")
                page.fill("#username", f"demo-{role}")
                page.fill("#password", PASSWORD)
                page.press("#password", "Enter")
                page.wait_for_url(f"{live_server.url}{landing}")
                links = page.locator("nav.mainnav a")
                expected = [] if role is Role.REGISTRAR else ["/studies"]
                assert [links.nth(i).get_attribute("href") for i in range(links.count())] == (
                    expected
                )
                assert "403" not in page.title()
                for language in ("kk", "ru", "en"):
                    page.get_by_role("button", name=names[language]).click()
                    page.wait_for_load_state("load")
                    assert page.locator("html").get_attribute("lang") == language
                    page.screenshot(
                        path=str(ARTIFACTS / f"web-{role}-landing-{language}.png"), full_page=True
                    )
                page.close()
        finally:
            browser.close()
