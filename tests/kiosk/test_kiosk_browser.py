"""The kiosk in a real browser: Playwright driving Debian's chromium (``/usr/bin/chromium``;
``scripts/test`` installs it; nothing is downloaded). The browser only touches the screen:
language buttons, the on-screen keypad, slot tiles."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from qamqor.kiosk.router import DEVICE_COOKIE
from tests.conftest import LiveServer
from tests.kiosk.kiosk_helpers import add_kiosk
from tests.registry.region import Region, build_region, slot_soon

CHROMIUM = Path(os.environ.get("QAMQOR_TEST_CHROMIUM", "/usr/bin/chromium"))
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
    with playwright_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield instance
        finally:
            instance.close()


def kiosk_page(browser, live_server: LiveServer, token: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 1024}, locale="ru-RU")
    context.add_cookies([{"name": DEVICE_COOKIE, "value": token, "url": live_server.url}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def type_on_keypad(page, digits: str) -> None:  # type: ignore[no-untyped-def]
    for digit in digits:
        page.locator(f'form[data-keypad] [data-key="{digit}"]').click()


def sign_in(page, live_server: LiveServer, iin: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{live_server.url}/kiosk")
    # Choose Kazakh (after trying Russian): the switch is on the screen.
    page.get_by_role("button", name="Русский").click()
    assert page.locator("html").get_attribute("lang") == "ru"
    page.get_by_role("button", name="Қазақша").click()
    assert page.locator("html").get_attribute("lang") == "kk"
    type_on_keypad(page, iin)
    assert page.locator("#iin").input_value() == iin
    page.get_by_role("button", name="Жалғастыру").click()
    code = page.locator("[data-demo-code]").inner_text().strip()
    assert re.fullmatch(r"\d{6}", code)
    type_on_keypad(page, code)
    page.get_by_role("button", name="Кіру").click()
    page.wait_for_url(re.compile(r"/kiosk/home$"))


@pytest.fixture
def region(runtime) -> Region:  # type: ignore[no-untyped-def]
    return build_region(runtime)


def test_kazakh_iin_code_book_earliest_check_in_ticket(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    soon = slot_soon(live_server.runtime, region)
    page = kiosk_page(browser, live_server, add_kiosk(live_server.runtime, region.polyclinic_id))
    sign_in(page, live_server, region.man_iin)
    assert "Сәлеметсіз бе, Бауыржан!" in page.content()

    page.get_by_role("link", name="Қабылдауға жазылу").click()
    page.get_by_role("link", name="Терапевт").click()
    earliest = page.locator("[data-slot]").first
    assert earliest.get_attribute("data-slot") == str(soon)
    earliest.click()
    page.wait_for_url(re.compile(r"/kiosk/home$"))
    assert page.get_by_role("status").inner_text() == "Сіз қабылдауға жазылдыңыз."

    page.get_by_role("button", name="Келгенімді белгілеу").click()
    code = page.locator("[data-ticket-code]").inner_text()
    assert re.fullmatch(r"[A-Z]-\d{3}", code)
    receipt = page.get_by_role("link", name="Талонды басып шығару").get_attribute("href")
    pdf = page.request.get(f"{live_server.url}{receipt}")
    assert pdf.ok and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body().startswith(b"%PDF")

    page.get_by_role("link", name="Аяқтау").click()
    page.wait_for_url(re.compile(r"/kiosk$"))
    assert "Бауыржан" not in page.content()
    page.context.close()


def test_two_kiosks_book_the_same_slot_at_once(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    runtime = live_server.runtime
    first = kiosk_page(browser, live_server, add_kiosk(runtime, region.polyclinic_id, "k1"))
    second = kiosk_page(browser, live_server, add_kiosk(runtime, region.polyclinic_id, "k2"))
    sign_in(first, live_server, region.man_iin)
    sign_in(second, live_server, region.woman_iin)
    for page in (first, second):
        page.goto(f"{live_server.url}/kiosk/book?specialty=therapist")
    slot = first.locator("[data-slot]").first.get_attribute("data-slot")
    assert second.locator("[data-slot]").first.get_attribute("data-slot") == slot
    # Both touch the same tile at the same moment.
    for page in (first, second):
        page.evaluate(f"document.querySelector('[data-slot=\"{slot}\"]').click()")
    for page in (first, second):
        page.wait_for_load_state("load")
        # Locator waits, not wait_for_function: the kiosk's CSP forbids evaluating strings.
        page.locator(".k-message, .k-error").first.wait_for()
    outcomes = sorted(
        page.locator(".k-message, .k-error").first.inner_text() for page in (first, second)
    )
    assert outcomes == [
        "Бұл уақыт жаңа ғана брондалды. Басқасын таңдаңыз.",
        "Сіз қабылдауға жазылдыңыз.",
    ]
    for page in (first, second):
        page.context.close()


def test_hall_display_shows_called_tickets_live(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from qamqor.core.auth import create_user
    from qamqor.core.db import write_session
    from qamqor.scheduling import service

    runtime = live_server.runtime
    with write_session(runtime.session_factory) as session:
        create_user(session, username="desk", password="desk-password", role="registrar")
        ticket = service.issue_ticket(
            session, facility_id=region.polyclinic_id, specialty="therapist"
        ).code
    hall = kiosk_page(browser, live_server, add_kiosk(runtime, region.polyclinic_id, "hall"))
    hall.goto(f"{live_server.url}/kiosk/hall")
    playwright_api.expect(hall.locator("#waiting-count")).to_have_text("1")
    assert hall.locator(".k-hall-code").count() == 0
    called = httpx.post(
        f"{live_server.url}/api/queue/{region.polyclinic_id}/call-next",
        json={"room": "101"},
        auth=("desk", "desk-password"),
    )
    assert called.json()["code"] == ticket
    # No reload: the display polls and shows the number.
    hall.locator(".k-hall-latest .k-hall-code").filter(has_text=ticket).wait_for()
    assert hall.locator(".k-hall-latest .k-hall-room").inner_text() == "101"
    hall.context.close()


def test_an_idle_screen_is_cleared_and_the_session_ends(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    runtime = live_server.runtime
    runtime.settings.kiosk_idle_seconds = 10
    page = kiosk_page(browser, live_server, add_kiosk(runtime, region.polyclinic_id))
    sign_in(page, live_server, region.man_iin)
    assert "Бауыржан" in page.content()
    page.wait_for_url(re.compile(r"/kiosk$"), timeout=20_000)  # nobody touched it
    assert "Бауыржан" not in page.content()
    page.goto(f"{live_server.url}/kiosk/home")
    assert page.url.endswith("/kiosk")  # the server ended the session too
    page.context.close()
