"""The kiosk in a real browser: Playwright driving Debian's chromium (``/usr/bin/chromium``;
``scripts/test`` installs it; nothing is downloaded). The browser only touches the screen:
language buttons, the on-screen keypad, slot tiles. Screenshots of the screens, in Kazakh,
Russian and English, go to ``test-artifacts/kiosk-*.png``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from qamqor.kiosk.router import DEVICE_COOKIE
from tests.conftest import ARTIFACTS, LiveServer
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


#: Every frame's ``window.print`` records what it would print on the top window instead (the
#: test cannot see chromium's print dialog; ``--kiosk-printing`` sends the job to the printer).
RECORD_PRINTS = """
window.print = function () {
  var top = window.top;
  (top.__qamqorPrinted = top.__qamqorPrinted || []).push(window.location.pathname);
};
"""
LANGUAGE_BUTTONS = {"kk": "Қазақша", "ru": "Русский", "en": "English"}


def kiosk_page(  # type: ignore[no-untyped-def]
    browser, live_server: LiveServer, token: str, width: int = 1280, height: int = 1024
):
    context = browser.new_context(viewport={"width": width, "height": height}, locale="ru-RU")
    context.add_cookies([{"name": DEVICE_COOKIE, "value": token, "url": live_server.url}])
    context.add_init_script(RECORD_PRINTS)
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def shoot(page, name: str, *, full_page: bool = False) -> None:  # type: ignore[no-untyped-def]
    """A screenshot of the screen as it is, to ``test-artifacts/kiosk-NAME.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"kiosk-{name}.png"), full_page=full_page)


def choose(page, language: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_role("button", name=LANGUAGE_BUTTONS[language]).click()
    page.wait_for_load_state("load")
    assert page.locator("html").get_attribute("lang") == language


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
    shoot(page, "home-kk")

    page.get_by_role("link", name="Қабылдауға жазылу").click()
    shoot(page, "specialties-kk")
    page.get_by_role("link", name="Терапевт").click()
    shoot(page, "slots-kk")
    earliest = page.locator("[data-slot]").first
    assert earliest.get_attribute("data-slot") == str(soon)
    earliest.click()
    page.wait_for_url(re.compile(r"/kiosk/home$"))
    assert page.get_by_role("status").inner_text() == "Сіз қабылдауға жазылдыңыз."

    page.get_by_role("button", name="Келгенімді белгілеу").click()
    code = page.locator("[data-ticket-code]").inner_text()
    assert re.fullmatch(r"[A-Z]-\d{3}", code)
    receipt = page.get_by_role("link", name="Талонды басып шығару").get_attribute("href")
    assert re.fullmatch(r"/kiosk/ticket/\d+/print", receipt)
    pdf = page.request.get(f"{live_server.url}{receipt.removesuffix('/print')}/receipt.pdf")
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


def test_the_ticket_prints_from_a_frame_and_the_kiosk_stays_on_its_page(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    """The "Print the ticket" link once opened the PDF in chromium's viewer: no way back and no idle
    reset. Now the receipt prints from a hidden frame; the screen, and its idle reset, stay."""
    runtime = live_server.runtime
    runtime.settings.kiosk_idle_seconds = 10
    soon = slot_soon(runtime, region)
    page = kiosk_page(browser, live_server, add_kiosk(runtime, region.polyclinic_id))
    sign_in(page, live_server, region.man_iin)
    page.goto(f"{live_server.url}/kiosk/book?specialty=therapist")
    page.locator(f'[data-slot="{soon}"]').click()
    page.wait_for_url(re.compile(r"/kiosk/home$"))
    page.get_by_role("button", name="Келгенімді белгілеу").click()
    page.wait_for_url(re.compile(r"/kiosk/ticket/\d+$"))
    ticket_url = page.url
    code = page.locator("[data-ticket-code]").inner_text()
    for language in ("ru", "en", "kk"):
        choose(page, language)
        assert page.url == ticket_url
        shoot(page, f"ticket-{language}")

    page.get_by_role("link", name="Талонды басып шығару").click()
    frame = page.frame_locator("iframe[name=k-print-frame]")
    playwright_api.expect(frame.locator("[data-ticket-code]")).to_have_text(code)
    playwright_api.expect(page.locator("[data-print-status]")).to_be_visible()
    assert page.url == ticket_url  # still the kiosk's own page
    printed = page.evaluate("window.__qamqorPrinted || []")
    assert printed == [f"{ticket_url.removeprefix(live_server.url)}/print"]
    assert "Қабылдау уақыты:" in frame.locator("body").inner_text()
    shoot(page, "ticket-printing-kk")

    # Nobody touches it: the ticket screen goes back to the start, the session ends.
    page.wait_for_url(re.compile(r"/kiosk$"), timeout=20_000)
    page.goto(ticket_url)
    assert page.url.endswith("/kiosk")
    page.context.close()


def test_the_printed_receipt_in_three_languages(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    """The receipt as the 80 mm printer gets it (print media), no English on kk/ru tickets."""
    runtime = live_server.runtime
    soon = slot_soon(runtime, region)
    page = kiosk_page(browser, live_server, add_kiosk(runtime, region.polyclinic_id))
    sign_in(page, live_server, region.man_iin)
    page.goto(f"{live_server.url}/kiosk/book?specialty=therapist")
    page.locator(f'[data-slot="{soon}"]').click()
    page.get_by_role("button", name="Келгенімді белгілеу").click()
    page.wait_for_url(re.compile(r"/kiosk/ticket/\d+$"))
    ticket_url = page.url
    expected = {
        "kk": ["Кезек талоны", "Кабинет: 101", "Қабылдау уақыты:", "Талон берілді:"],
        "ru": ["Талон электронной очереди", "Каб.: 101", "Время приёма:", "Талон выдан:"],
        "en": ["Queue ticket", "Room: 101", "Appointment:", "Issued:"],
    }
    for language, texts in expected.items():
        page.goto(ticket_url)
        choose(page, language)
        receipt = page.context.new_page()
        receipt.set_viewport_size({"width": 302, "height": 416})  # 80 x 110 mm at 96 dpi
        receipt.emulate_media(media="print")
        receipt.goto(f"{ticket_url}/print")
        text = receipt.locator("body").inner_text()
        for wanted in texts:
            assert wanted in text, (language, wanted, text)
        if language != "en":
            assert not re.search(r"\b(Appointment|Issued|Room|Queue)\b", text), text
        receipt.screenshot(path=str(ARTIFACTS / f"kiosk-receipt-{language}.png"))
        receipt.close()
    page.context.close()


# Layout ------------------------------------------------------------------------------------
def box(page, selector: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not on the screen"
    return found


def no_sideways_scroll(page) -> None:  # type: ignore[no-untyped-def]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], "the screen scrolls sideways"


def test_the_start_screen_fills_a_portrait_screen(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    """1080 x 1920, portrait: the keypad is wide and the entry reaches well below the middle
    (everything once sat in the top half, the keypad a third of the width)."""
    token = add_kiosk(live_server.runtime, region.polyclinic_id)
    page = kiosk_page(browser, live_server, token, width=1080, height=1920)
    page.goto(f"{live_server.url}/kiosk")
    for language in ("kk", "ru", "en"):
        choose(page, language)
        keypad, go = box(page, ".k-keypad"), box(page, "[data-submit]")
        assert keypad["width"] >= 0.6 * 1080, keypad
        assert go["y"] + go["height"] >= 0.7 * 1920, go  # not in the top half
        assert go["y"] + go["height"] <= 1920, go  # nor below the fold
        assert box(page, ".k-key")["height"] >= 120
        no_sideways_scroll(page)
        shoot(page, f"start-portrait-{language}")
    page.context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_activation_screen_in_three_languages(browser, live_server: LiveServer) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 1024})
    page = context.new_page()
    page.goto(f"{live_server.url}/kiosk")
    page.wait_for_url(re.compile(r"/kiosk/activate$"))
    assert page.locator("#token").is_visible()
    for language in ("ru", "en", "kk"):  # the switch works before activation too
        choose(page, language)
        assert page.url.endswith("/kiosk/activate")
        shoot(page, f"activate-{language}")
    context.close()


def test_continue_is_above_the_fold_on_a_small_screen_even_with_an_error(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    token = add_kiosk(live_server.runtime, region.polyclinic_id)
    page = kiosk_page(browser, live_server, token, width=768, height=1024)
    page.goto(f"{live_server.url}/kiosk")
    wrong = region.man_iin[:11] + str((int(region.man_iin[11]) + 1) % 10)
    for language in ("kk", "ru", "en"):
        choose(page, language)
        go = box(page, "[data-submit]")
        assert go["y"] + go["height"] <= 1024, (language, go)
        no_sideways_scroll(page)
        shoot(page, f"start-768-{language}")
        type_on_keypad(page, wrong)
        page.locator("[data-submit]").click()
        page.locator(".k-error").wait_for()
        go = box(page, "[data-submit]")
        assert go["y"] + go["height"] <= 1024, (language, "with the error", go)
        shoot(page, f"start-768-error-{language}")
        page.locator('[data-key="clear"]').click()
    page.context.close()


def test_a_wrong_iin_keeps_its_digits_to_correct(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    """A typo in one digit: the twelve digits stay, one ⌫ and the right digit fix it."""
    token = add_kiosk(live_server.runtime, region.polyclinic_id)
    page = kiosk_page(browser, live_server, token)
    page.goto(f"{live_server.url}/kiosk")
    wrong = region.man_iin[:11] + str((int(region.man_iin[11]) + 1) % 10)
    type_on_keypad(page, wrong)
    page.locator("[data-submit]").click()
    assert "ЖСН-нің бақылау цифры қате" in page.locator(".k-error").inner_text()
    assert page.locator("#iin").input_value() == wrong
    page.locator('[data-key="back"]').click()
    type_on_keypad(page, region.man_iin[11])
    assert page.locator("#iin").input_value() == region.man_iin
    page.locator("[data-submit]").click()
    page.wait_for_url(re.compile(r"/kiosk/code$"))
    page.context.close()


def test_buttons_and_links_look_alike_and_demo_mode_shows_the_code_once(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    token = add_kiosk(live_server.runtime, region.polyclinic_id)
    page = kiosk_page(browser, live_server, token, width=768, height=1024)
    page.goto(f"{live_server.url}/kiosk")
    type_on_keypad(page, region.woman_iin)
    page.locator("[data-submit]").click()
    page.wait_for_url(re.compile(r"/kiosk/code$"))
    code = page.locator("[data-demo-code]").inner_text().strip()
    assert page.locator("main").inner_text().count(code) == 1
    font = "el => getComputedStyle(el).fontFamily + '|' + getComputedStyle(el).fontSize"
    button = page.locator("button.k-button").first.evaluate(font)
    link = page.locator("a.k-button").first.evaluate(font)
    assert button == link
    key = page.locator(".k-key").first.evaluate("el => getComputedStyle(el).fontFamily")
    assert key == page.locator("body").evaluate("el => getComputedStyle(el).fontFamily")
    for language in ("kk", "ru", "en"):
        choose(page, language)
        for target in ("[data-submit]", "[data-start-again]"):
            found = box(page, target)
            assert found["y"] + found["height"] <= 1024, (language, target, found)
        no_sideways_scroll(page)
        shoot(page, f"code-768-{language}")
    page.context.close()


def test_the_hall_display_fills_a_full_hd_screen(
    browser, live_server: LiveServer, region: Region
) -> None:  # type: ignore[no-untyped-def]
    """1920 x 1080: the called numbers use the whole width, the waiting count reads from
    across the hall (it used the middle third, with a 16 px count)."""
    from qamqor.core.db import write_session
    from qamqor.scheduling import service

    runtime = live_server.runtime
    with write_session(runtime.session_factory) as session:
        for _ in range(9):
            service.issue_ticket(session, facility_id=region.polyclinic_id, specialty="therapist")
        for room in ("101", "102", "210", "7", "101", "305"):
            service.call_next(session, facility_id=region.polyclinic_id, room=room)
    token = add_kiosk(runtime, region.polyclinic_id, "hall")
    page = kiosk_page(browser, live_server, token, width=1920, height=1080)
    for language in ("kk", "ru", "en"):
        page.goto(f"{live_server.url}/kiosk")
        choose(page, language)
        page.goto(f"{live_server.url}/kiosk/hall")
        playwright_api.expect(page.locator("#waiting-count")).to_have_text("3")
        page.locator(".k-hall-latest .k-hall-code").wait_for()
        assert box(page, ".k-hall")["width"] >= 0.9 * 1920
        size = "el => parseFloat(getComputedStyle(el).fontSize)"
        assert page.locator("#waiting-count").evaluate(size) >= 120
        assert (
            page.locator(".k-hall-item:not(.k-hall-latest) .k-hall-code").first.evaluate(size) >= 64
        )
        assert page.locator(".k-hall-latest .k-hall-code").evaluate(size) >= 90
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height <= 1080, "the hall display scrolls"
        no_sideways_scroll(page)
        shoot(page, f"hall-{language}")
    page.context.close()


# The demo ----------------------------------------------------------------------------------
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_demo_shows_check_in_the_ticket_and_the_hall_display(
    browser, live_server: LiveServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """``qamqor demo init`` as ``scripts/start`` runs it, then its kiosk token and the README's
    IIN: the visit today can be checked in, the ticket printed, and the hall display shows it
    when the registrar calls it by the polyclinic's code (P1)."""
    import io

    import httpx
    from rich.console import Console

    from qamqor.demo import init_demo

    runtime = live_server.runtime
    runtime.settings.shared_data_dir = tmp_path / "none"
    init_demo(runtime, console=Console(file=io.StringIO()), residents=300)
    text = (runtime.settings.data_dir / "demo-credentials.txt").read_text()
    token = re.search(r"/kiosk/activate\): (\S+)", text).group(1)
    password = re.search(r"^registrar (\S+) \(registrar\)$", text, re.MULTILINE).group(1)
    iin = re.search(r"^resident (\d{12}) .*today", text, re.MULTILINE).group(1)
    assert iin == "860904350504"  # the README's example

    page = kiosk_page(browser, live_server, token)
    sign_in(page, live_server, iin)
    assert "Сәлеметсіз бе, Ерлан!" in page.content()
    for language in ("ru", "en", "kk"):
        choose(page, language)
        shoot(page, f"demo-home-{language}", full_page=True)
    page.get_by_role("button", name="Келгенімді белгілеу").click()
    page.wait_for_url(re.compile(r"/kiosk/ticket/\d+$"))
    code = page.locator("[data-ticket-code]").inner_text()
    page.get_by_role("link", name="Талонды басып шығару").click()
    frame = page.frame_locator("iframe[name=k-print-frame]")
    playwright_api.expect(frame.locator("[data-ticket-code]")).to_have_text(code)
    shoot(page, "demo-ticket-kk")

    hall = page.context.new_page()
    hall.set_viewport_size({"width": 1920, "height": 1080})
    hall.goto(f"{live_server.url}/kiosk/hall")
    called = httpx.post(
        f"{live_server.url}/api/queue/P1/call-next",
        json={"room": "104"},
        auth=("registrar", password),
    )
    assert called.status_code == 200 and called.json()["code"] == code
    hall.locator(".k-hall-latest .k-hall-code").filter(has_text=code).wait_for()
    shoot(hall, "demo-hall-kk")
    page.context.close()

    # The woman due for mammography sees it and can book it.
    woman = re.search(r"^resident (\d{12}) .*mammography", text, re.MULTILINE).group(1)
    page = kiosk_page(browser, live_server, token)
    sign_in(page, live_server, woman)
    assert "Сізге өту керек скринингтер" in page.content()
    for language in ("ru", "en", "kk"):
        choose(page, language)
        shoot(page, f"demo-screening-{language}", full_page=True)
    page.get_by_role("link", name="Скринингке жазылу").click()
    assert page.locator("[data-slot]").count() > 0
    page.context.close()
