"""The OHIF viewer (the released build, unchanged but for its data source) shows a study
straight from Qamqor's DICOMweb, across origins, in a real browser.

OHIF is served from its own origin, as hospitals deploy it, so this also checks Qamqor's CORS
answers; the browser sends a bearer token, as OHIF does behind a single sign-on. Needs
Debian's chromium and the OHIF build that ``scripts/test`` fetches from the npm registry
(``scripts/lib.sh``: ``fetch_ohif``).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qamqor.core.auth import create_token, create_user
from qamqor.core.settings import Settings
from qamqor.pacs.importer import import_paths
from tests.conftest import ARTIFACTS, SHARED_DATA, LiveServer, free_port

REPO = Path(__file__).resolve().parents[2]
OHIF_VERSION = "3.13.2"
OHIF_DIST = Path(
    os.environ.get("QAMQOR_TEST_OHIF_DIST", REPO / ".cache" / f"ohif-{OHIF_VERSION}" / "dist")
)
CHROMIUM = Path("/usr/bin/chromium")
OHIF_PORT = free_port()
#: JPEG Lossless CT slice: decoded in the browser by OHIF's own codec.
STUDY_FILE = os.environ.get("QAMQOR_TEST_OHIF_FILE", "CT1_JPLL.dcm")

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'qamqor.db'}"  # the viewer does not care which database


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"cors_origins": [f"http://127.0.0.1:{OHIF_PORT}"]})


class _SinglePageApp(http.server.SimpleHTTPRequestHandler):
    """OHIF's routes (``/viewer?...``) are paths of its single page, not files."""

    def send_head(self):  # type: ignore[no-untyped-def]
        if not os.path.exists(self.translate_path(self.path)):
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def ohif(tmp_path: Path, live_server: LiveServer) -> Iterator[str]:
    if not (OHIF_DIST / "index.html").is_file():
        pytest.skip(f"the OHIF build is not at {OHIF_DIST}: `bash scripts/test` fetches it")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: `bash scripts/test` installs Debian's chromium")
    dist = tmp_path / "ohif"
    shutil.copytree(OHIF_DIST, dist)
    config = (dist / "app-config.js").read_text()
    demo = "'https://d14fa38qiwhyfd.cloudfront.net/dicomweb'"
    assert demo in config, "OHIF's default data source changed: update this test"
    config = (
        config.replace(demo, f"'{live_server.url}/dicom-web'")
        .replace("qidoSupportsIncludeField: false", "qidoSupportsIncludeField: true")
        .replace("staticWado: true", "staticWado: false")
        .replace("thumbnailRendering: 'thumbnail'", "thumbnailRendering: 'wadors'")
    )
    (dist / "app-config.js").write_text(config)
    handler = functools.partial(_SinglePageApp, directory=str(dist))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", OHIF_PORT), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{OHIF_PORT}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_ohif_shows_a_study_from_qamqor(live_server: LiveServer, ohif: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright

    runtime = live_server.runtime
    dicom = SHARED_DATA / "dicom" / STUDY_FILE
    if not dicom.is_file():
        pytest.skip(f"{dicom} is not here; see ../shared/data")
    summary = import_paths(runtime.archive, [str(dicom)])
    assert summary.stored == 1, summary.rejections
    with runtime.session_factory() as session:
        user = create_user(
            session, username="viewer", password="viewer-password", role="radiologist"
        )
        token = create_token(session, user=user, name="ohif")
        session.commit()
    auth = {"Authorization": f"Bearer {token}"}
    (study,) = httpx.get(f"{live_server.url}/dicom-web/studies", headers=auth).json()
    study_uid = study["0020000D"]["Value"][0]

    answers: list[tuple[int, str]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--use-angle=swiftshader"]
        )
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, extra_http_headers=auth
            )
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"[:300]))
            page.on(
                "response",
                lambda r: answers.append((r.status, r.url)) if live_server.url in r.url else None,
            )
            with page.expect_response(
                lambda r: "/frames/" in r.url and r.status == 200, timeout=180_000
            ):
                page.goto(f"{ohif}/viewer?StudyInstanceUIDs={study_uid}")
            # The frame is decoded in a web worker and drawn on the viewport's canvas: wait
            # until the canvas holds more than the black background.
            try:
                page.wait_for_function(
                    """() => {
                        const canvas = document.querySelector('.cornerstone-canvas, canvas');
                        if (!canvas || !canvas.width) return false;
                        const probe = document.createElement('canvas');
                        probe.width = 64; probe.height = 64;
                        const ctx = probe.getContext('2d');
                        ctx.drawImage(canvas, 0, 0, 64, 64);
                        const px = ctx.getImageData(0, 0, 64, 64).data;
                        let bright = 0;
                        for (let i = 0; i < px.length; i += 4) if (px[i] > 40) bright++;
                        return bright > 200;
                    }""",
                    timeout=120_000,
                    polling=1000,
                )
            except PlaywrightTimeoutError:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "ohif-viewer-failed.png"))
                tail = "\n".join(console[-30:])
                raise AssertionError(f"OHIF drew nothing; its console said:\n{tail}") from None
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "ohif-viewer.png"))
        finally:
            browser.close()

    failed = [(status, url) for status, url in answers if status >= 400]
    assert not failed, failed
    asked = {url.split("?")[0].rsplit("/", 1)[-1] for _, url in answers}
    assert {"series", "metadata", "1"} <= asked  # QIDO-RS, WADO-RS metadata, frame 1
