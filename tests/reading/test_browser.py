"""In a real browser (Playwright driving Debian's chromium): a radiologist logs in, finds an
AI-flagged study first on the worklist, opens it, toggles the AI overlay, opens a prior beside
it, fills a BI-RADS report, signs it, and the SR is found in the archive through QIDO-RS.
Screenshots of the worklist and the viewer go to ``test-artifacts/``."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect
from pydicom import dcmread
from sqlalchemy import select

from qamqor.reading.models import Report
from qamqor.runtime import Runtime
from tests.conftest import ARTIFACTS, LiveServer

from .helpers import PASSWORD, add_user, analyse, chest_study, mammo_study, store, store_files

CHROMIUM = Path("/usr/bin/chromium")
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/test installs it)"
)


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_radiologist_reads_a_flagged_mammogram_and_signs_a_bi_rads_report(
    runtime: Runtime,
    live_server: LiveServer,
    shared_dicom_dir: Path,
    browser,  # type: ignore[no-untyped-def]
) -> None:
    # Real and synthetic studies, analysed by the real pipeline. The flagged mammogram
    # arrives first; a prior of the same woman is in the archive.
    flagged = mammo_study(patient_id="870312400777", name="ZHUMABAYEVA^DANA", accession="MG77")
    store(runtime, *flagged)
    store_files(runtime, shared_dicom_dir / "MG1_J2KI.dcm", shared_dicom_dir / "RG1_J2KI.dcm")
    normal_chest = chest_study(patient_id="650101300555", accession="CR55")
    store(runtime, *normal_chest)
    prior = mammo_study(
        patient_id="870312400777",
        name="ZHUMABAYEVA^DANA",
        accession="MG70",
        study_date="20240115",
        spot=False,
    )
    store(runtime, *prior)
    uid = str(flagged[0].StudyInstanceUID)
    mg1 = dcmread(shared_dicom_dir / "MG1_J2KI.dcm", stop_before_pixels=True)
    rg1 = dcmread(shared_dicom_dir / "RG1_J2KI.dcm", stop_before_pixels=True)
    analyse(
        runtime,
        uid,
        str(mg1.StudyInstanceUID),
        str(rg1.StudyInstanceUID),
        str(normal_chest[0].StudyInstanceUID),
    )
    add_user(runtime, "dana.rad", full_name="Dana Kairatovna")
    if ARTIFACTS.exists():
        for old in ARTIFACTS.glob("reading-*.png"):
            old.unlink()
    ARTIFACTS.mkdir(exist_ok=True)

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live_server.url}/reading")
    page.fill("#username", "dana.rad")
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_url(f"{live_server.url}/reading")

    rows = page.locator("tr.wl-row")
    assert rows.count() >= 4
    first = rows.first
    assert first.get_attribute("data-ai-priority") == "high"
    assert first.get_attribute("data-study-uid") == uid
    assert "L breast" in first.inner_text() or "Сол сүт безі" in first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "reading-worklist.png"), full_page=True)

    first.locator("a", has_text="Ашу").click()
    page.wait_for_url(f"{live_server.url}/reading/studies/{uid}")
    labels = page.locator("#pane-current .viewport .vp-label").all_inner_texts()
    assert labels == ["RCC", "LCC", "RMLO", "LMLO"]  # the hanging, right breast on the left
    expect(page.locator("#pane-current .viewport[data-loaded='1']")).to_have_count(
        4,
        timeout=30_000,
    )
    assert int(page.locator("body").get_attribute("data-first-image-ms") or 0) > 0

    # "Four views" shows only when it changes the screen: after one series was opened.
    four_views = page.locator("[data-action='hanging']")
    expect(four_views).to_be_hidden()
    page.locator("button.thumb").first.click()
    expect(four_views).to_be_visible()
    four_views.click()
    expect(page.locator("#pane-current .viewport .vp-label")).to_have_text(
        ["RCC", "LCC", "RMLO", "LMLO"]
    )
    expect(four_views).to_be_hidden()

    overlay = page.locator("#overlay-toggle")
    overlay.click()
    assert overlay.get_attribute("aria-pressed") == "true"
    expect(page.locator("#pane-current .viewport[data-overlay='1']")).to_have_count(
        4,
        timeout=30_000,
    )
    page.screenshot(path=str(ARTIFACTS / "reading-viewer-overlay.png"))
    page.keyboard.press("a")  # the keyboard shortcut switches it off again
    assert overlay.get_attribute("aria-pressed") == "false"
    expect(page.locator("#pane-current .viewport[data-overlay='1']")).to_have_count(0)

    page.locator("button.prior").first.click()
    expect(page.locator("#pane-prior-body .viewport[data-loaded='1']")).to_have_count(
        4,
        timeout=30_000,
    )
    page.screenshot(path=str(ARTIFACTS / "reading-viewer.png"))

    page.check("input[name=density][value=c]")
    page.select_option("#birads-right", "1")
    page.select_option("#birads-left", "4")
    page.select_option("select[name=finding0_kind]", "mass")
    page.select_option("select[name=finding0_side]", "L")
    page.select_option("select[name=finding0_location]", "uoq")
    page.fill("input[name=finding0_size]", "9")
    page.fill("#impression", "Сол сүт безінің жоғарғы сыртқы квадрантында күдікті түзіліс.")
    page.click("#sign")
    page.wait_for_selector("a:has-text('PDF')")
    assert not errors, errors

    # A one-image mammography study (the real MG1) is hung as that image, filling the pane.
    page.goto(f"{live_server.url}/reading/studies/{mg1.StudyInstanceUID}")
    views = page.locator("#pane-current .viewport")
    expect(views).to_have_count(1)
    expect(page.locator("#pane-current .viewport.empty")).to_have_count(0)
    pane = page.locator("#pane-current").bounding_box()
    view = views.first.bounding_box()
    assert pane and view and view["width"] > 0.9 * pane["width"], (pane, view)
    expect(page.locator("[data-action='hanging']")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "reading-viewer-one-mammogram.png"))

    with runtime.session_factory() as session:
        report = session.scalar(select(Report).where(Report.study_instance_uid == uid))
        assert report is not None and report.status == "signed"
    found = httpx.get(
        f"{live_server.url}/dicom-web/studies/{uid}/instances",
        params={"SOPClassUID": COMPREHENSIVE_SR},
        auth=("dana.rad", PASSWORD),
    )
    assert found.status_code == 200
    uids = [item["00080018"]["Value"][0] for item in found.json()]
    assert report.sr_sop_instance_uid in uids
    sr = dcmread(io.BytesIO(runtime.archive.read_instance_bytes(report.sr_sop_instance_uid)))
    values = [
        item.ConceptCodeSequence[0].CodeValue
        for item in sr.ContentSequence
        if "ConceptCodeSequence" in item
    ]
    assert "BIRADS-4" in values and "BIRADS-1" in values and "density-c" in values
    shutil.copy(ARTIFACTS / "reading-viewer.png", ARTIFACTS / "reading-viewer-last.png")
