"""The reading workstation: worklist page time with 10,000 open studies, and time to first image.

1. **Worklist.** A fresh database (SQLite by default, or a PostgreSQL schema) with 10,000 open
   studies of 10,000 patients (one series each) and their AI results (5% high, 10% medium, 60%
   low, 5% not analysed, 20% still pending), bulk-inserted. Qamqor's web app runs in this
   process (uvicorn on 127.0.0.1); a radiologist logged in with the session cookie requests
   the worklist page (first page, a deep page, a search, a filter), one request at a time.
   Reported: time from request to the whole page received (p50, p95), and the worklist's SQL
   alone (``query_worklist``, the same filters, in-process).
2. **Time to first image.** A 4-view mammography study (RCC, LCC, RMLO, LMLO made from the real
   ``MG1_J2KI.dcm``: 4664 x 3064, JPEG 2000) and a chest study (the real ``RG1_J2KI.dcm``:
   1955 x 1841, JPEG 2000) in the archive; headless chromium (Playwright, Debian's
   ``/usr/bin/chromium``) opens the viewer page at 1600 x 1000 and the page records when the
   first and the last image are on screen (ms from the start of navigation). Also the rendered
   requests the viewer makes (frames at the size of its panes), timed with an HTTP client, 4 at
   once for mammography.

Run: ``.venv/bin/python -m bench.reading [--backend sqlite|postgresql] [--studies N]``
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from pydicom import dcmread
from pydicom.uid import generate_uid

from bench import common

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "bench-" + uuid.uuid4().hex


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'qamqor.db'}"
        return
    schema = f"qamqor_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(common.POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        separator = "&" if "?" in common.POSTGRES_URL else "?"
        yield f"{common.POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def fill_worklist(runtime, count: int) -> None:  # type: ignore[no-untyped-def]
    from qamqor.ai.models import AIStudy
    from qamqor.core.db import utcnow
    from qamqor.pacs.models import Patient, Series, Study

    rng = random.Random(42)
    now = utcnow()
    patients, studies, series, ai_rows = [], [], [], []
    for index in range(1, count + 1):
        surname = rng.choice(["AKHMETOVA", "BEKOVA", "IVANOVA", "KIM", "NURLANOVA", "OMAROVA"])
        name = f"{surname}^{rng.choice(['AIGERIM', 'DANA', 'ANNA', 'SAULE'])}"
        patients.append(
            {
                "id": index,
                "patient_id": f"{800000000000 + index}",
                "issuer_of_patient_id": "",
                "patient_name": name,
                "patient_name_search": name.upper(),
                "patient_birth_date": "19700101",
                "patient_sex": "F",
                "created_at": now,
            }
        )
        modality = "MG" if index % 3 else rng.choice(["CR", "DX"])
        uid = f"{common.UID_ROOT}77.{index}"
        studies.append(
            {
                "id": index,
                "study_instance_uid": uid,
                "patient_pk": index,
                "study_date": f"2026{rng.randint(1, 11):02d}{rng.randint(1, 28):02d}",
                "study_time": "101010",
                "accession_number": f"A{index:07d}",
                "study_id": "1",
                "study_description": "SCREENING" if modality == "MG" else "CHEST PA",
                "referring_physician_name": "",
                "institution_name": f"POLYCLINIC {index % 12 + 1}",
                "modalities_in_study": modality,
                "sop_classes_in_study": "",
                "number_of_series": 1,
                "number_of_instances": 4 if modality == "MG" else 1,
                "created_at": now - timedelta(minutes=rng.randint(0, 60 * 24 * 10)),
                "last_instance_at": now,
                "stable_at": now,
            }
        )
        series.append(
            {
                "id": index,
                "series_instance_uid": f"{uid}.1",
                "study_pk": index,
                "modality": modality,
                "series_number": 1,
                "series_description": "",
                "body_part_examined": "BREAST" if modality == "MG" else "CHEST",
                "laterality": "",
                "series_date": "",
                "series_time": "",
                "performed_procedure_step_start_date": "",
                "performed_procedure_step_start_time": "",
                "number_of_instances": 1,
                "created_at": now,
            }
        )
        draw = rng.random()
        if draw < 0.8:
            priority = (
                "high" if draw < 0.05 else "medium" if draw < 0.15 else
                "not_analysed" if draw < 0.2 else "low"
            )  # fmt: skip
            ai_rows.append(
                {
                    "study_instance_uid": uid,
                    "status": "done",
                    "task": "mammo" if modality == "MG" else "chest",
                    "score": None if priority == "not_analysed" else rng.random(),
                    "priority": priority,
                    "priority_rank": {"high": 3, "medium": 2, "low": 1, "not_analysed": 0}[
                        priority
                    ],
                    "model": "bench",
                    "reason": "no laterality" if priority == "not_analysed" else "",
                    "breast_scores": "L=0.5;R=0.1" if modality == "MG" else "",
                    "source_fingerprint": "",
                    "report_sop_instance_uid": "",
                    "attempts": 1,
                    "queued_at": now,
                    "worker": "",
                }
            )
    with runtime.engine.begin() as connection:
        for model, rows in ((Patient, patients), (Study, studies), (Series, series)):
            connection.execute(sa.insert(model), rows)
        connection.execute(sa.insert(AIStudy), ai_rows)
        if connection.dialect.name == "postgresql":
            for table in ("pacs_patients", "pacs_studies", "pacs_series"):
                connection.execute(
                    sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {count})")
                )
            connection.execute(sa.text("ANALYZE"))


def mammo_views(folder: Path, source: Path) -> list[Path]:
    """Four views (R/L, CC/MLO) of one study, each the real mammogram's pixels."""
    base = dcmread(source)
    study, series = generate_uid(), generate_uid()
    paths = []
    for number, (side, view) in enumerate(
        [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")], start=1
    ):
        ds = base.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.ImageLaterality = side
        ds.Laterality = side
        ds.ViewPosition = view
        ds.PatientOrientation = ["P", "L"] if side == "R" else ["A", "R"]
        path = folder / f"mg-{side}{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class Server:
    def __init__(self, runtime) -> None:  # type: ignore[no-untyped-def]
        import uvicorn

        from qamqor.web.app import create_app

        self.port = common.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(runtime), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        common.wait_until(lambda: self.server.started, timeout=20, what="the web server")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def instance_path(runtime, ds) -> str:  # type: ignore[no-untyped-def]
    """The stored file of ``ds`` (relative to the storage root), as the index has it."""
    from qamqor.pacs.models import Instance

    with runtime.session_factory() as session:
        path: str = session.scalar(
            sa.select(Instance.file_path).where(Instance.sop_instance_uid == ds.SOPInstanceUID)
        )
    return path


def login(client: httpx.Client, url: str) -> None:
    import re

    page = client.get(f"{url}/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    answer = client.post(
        f"{url}/login",
        data={"username": "reader", "password": PASSWORD, "csrf_token": token.group(1)},
    )
    answer.raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=40, help="per worklist query kind")
    parser.add_argument("--opens", type=int, default=5, help="viewer page loads per study")
    args = parser.parse_args()

    from qamqor.core.auth import create_user
    from qamqor.core.db import utcnow
    from qamqor.core.settings import Settings
    from qamqor.pacs.parsing import parse_part10
    from qamqor.reading import worklist
    from qamqor.runtime import build_runtime

    shared = Path(common.ROOT.parent / "shared" / "data" / "dicom")
    print(f"Machine: {common.machine_description()}; backend {args.backend}")
    failed = False
    with (
        tempfile.TemporaryDirectory(prefix="qamqor-bench-reading-") as tmp,
        database(args.backend, Path(tmp)) as url,
    ):
        settings = Settings(
            data_dir=Path(tmp) / "data", database_url=url, secret_key="b" * 40, job_workers=0
        )
        runtime = build_runtime(settings)
        with runtime.session_factory() as session:
            create_user(session, username="reader", password=PASSWORD, role="radiologist")
            session.commit()
        started = time.perf_counter()
        fill_worklist(runtime, args.studies)
        print(f"{args.studies} open studies inserted in {time.perf_counter() - started:.1f} s")

        kinds = {
            "first page": "",
            "page 40": "?page=40",
            "search (name part)": "?q=nurlanova",
            "filter (AI high, MG)": "?ai=high&modality=MG",
        }
        with Server(runtime) as server, httpx.Client(timeout=60, follow_redirects=True) as client:
            login(client, server.url)
            print("\nWorklist page (HTTP, one request at a time), ms")
            print(f"{'query':<24}{'p50':>8}{'p95':>8}{'rows':>6}")
            for name, query in kinds.items():
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    answer = client.get(f"{server.url}/reading{query}")
                    times.append((time.perf_counter() - t0) * 1000)
                    if answer.status_code != 200:
                        failed = True
                rows = answer.text.count('class="wl-row')
                print(
                    f"{name:<24}{percentile(times, 0.5):>8.1f}{percentile(times, 0.95):>8.1f}"
                    f"{rows:>6}"
                )
            print("\nWorklist SQL alone (query_worklist in-process), ms")
            filters = {
                "first page": ({}, 1),
                "page 40": ({}, 40),
                "search (name part)": ({"q": "nurlanova"}, 1),
                "filter (AI high, MG)": ({"ai": "high", "modality": "MG"}, 1),
            }
            for name, (values, page) in filters.items():
                times = []
                for _ in range(args.requests):
                    with runtime.session_factory() as session:
                        t0 = time.perf_counter()
                        worklist.query_worklist(
                            session,
                            worklist.WorklistFilter(**values).normalised(),
                            now=utcnow(),
                            page=page,
                        )
                        times.append((time.perf_counter() - t0) * 1000)
                print(f"{name:<24}{percentile(times, 0.5):>8.1f}{percentile(times, 0.95):>8.1f}")

            # Time to first image ---------------------------------------------------------
            mg_paths = mammo_views(Path(tmp), shared / "MG1_J2KI.dcm")
            cr_path = shared / "RG1_J2KI.dcm"
            parsed = [parse_part10(p.read_bytes()) for p in [*mg_paths, cr_path]]
            for result in runtime.archive.store_instances(parsed, source="bench"):
                assert not isinstance(result, Exception), result
            mg = [dcmread(p, stop_before_pixels=True) for p in mg_paths]
            cr = dcmread(cr_path, stop_before_pixels=True)

            from qamqor.pacs.render_cache import RenderCache

            cache = runtime.get(RenderCache)

            def clear_cache() -> None:
                shutil.rmtree(cache.folder, ignore_errors=True)

            def decode_ahead(datasets) -> None:  # type: ignore[no-untyped-def]
                # What the archive does when a study becomes stable (pacs.jobs).
                for ds in datasets:
                    path = runtime.archive.storage.root / instance_path(runtime, ds)
                    cache.prerender(
                        f"{ds.SOPInstanceUID}:{instance_path(runtime, ds)}",
                        lambda p=path: dcmread(p),
                    )

            print("\nRendered frames as the viewer asks for them (in-process HTTP), ms;")
            print("cold: nothing cached; first: first opening after arrival (decoded ahead);")
            print("second: the same study opened again")
            print(f"{'study':<34}{'cold':>8}{'first':>8}{'second':>8}")

            def fetch(ds, size: tuple[int, int]) -> float:  # type: ignore[no-untyped-def]
                t0 = time.perf_counter()
                answer = client.get(
                    f"{server.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                    f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/rendered",
                    params={"viewport": f"{size[0]},{size[1]}", "quality": "92"},
                    headers={"Accept": "image/jpeg"},
                )
                answer.raise_for_status()
                return (time.perf_counter() - t0) * 1000

            def open_all(datasets, size: tuple[int, int]) -> float:  # type: ignore[no-untyped-def]
                t0 = time.perf_counter()
                with ThreadPoolExecutor(len(datasets)) as pool:
                    list(pool.map(lambda d, s=size: fetch(d, s), datasets))
                return (time.perf_counter() - t0) * 1000

            for label, datasets, size in (
                ("mammography, 4 views at once", mg, (330, 780)),
                ("chest, 1 image", [cr], (1000, 780)),
            ):
                colds, firsts, seconds = [], [], []
                for _ in range(3):
                    clear_cache()
                    colds.append(open_all(datasets, size))
                    clear_cache()
                    decode_ahead(datasets)
                    firsts.append(open_all(datasets, size))
                    seconds.append(open_all(datasets, size))
                print(
                    f"{label:<34}{statistics.median(colds):>8.0f}"
                    f"{statistics.median(firsts):>8.0f}{statistics.median(seconds):>8.0f}"
                )
            clear_cache()
            decode_ahead([*mg, cr])

            if not CHROMIUM.exists():
                print("\n(no /usr/bin/chromium: browser timing skipped)")
            else:
                from playwright.sync_api import sync_playwright

                print(
                    "\nViewer page in chromium (1600 x 1000), ms from navigation start, median of"
                    f" {args.opens}"
                )
                print("(the first opening after arrival, then the median of the later ones)")
                print(f"{'study':<34}{'first image':>12}{'all images':>12}  opening")
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(
                        executable_path=str(CHROMIUM), args=["--no-sandbox"]
                    )
                    context = browser.new_context(viewport={"width": 1600, "height": 1000})
                    page = context.new_page()
                    page.goto(f"{server.url}/login")
                    page.fill("#username", "reader")
                    page.fill("#password", PASSWORD)
                    page.press("#password", "Enter")
                    page.wait_for_url(f"{server.url}/studies")
                    for label, uid, expected in (
                        ("mammography, 4 views", mg[0].StudyInstanceUID, 4),
                        ("chest", cr.StudyInstanceUID, 1),
                    ):
                        firsts, lasts = [], []
                        for _ in range(args.opens):
                            page.goto(f"{server.url}/reading/studies/{uid}")
                            page.locator(".viewport[data-loaded='1']").nth(expected - 1).wait_for(
                                timeout=60_000
                            )
                            body = page.locator("body")
                            firsts.append(float(body.get_attribute("data-first-image-ms") or 0))
                            lasts.append(float(body.get_attribute("data-last-image-ms") or 0))
                        print(f"{label:<34}{firsts[0]:>12.0f}{lasts[0]:>12.0f}  first")
                        if len(firsts) > 1:
                            print(
                                f"{label:<34}{statistics.median(firsts[1:]):>12.0f}"
                                f"{statistics.median(lasts[1:]):>12.0f}  later"
                            )
                    browser.close()
        runtime.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
