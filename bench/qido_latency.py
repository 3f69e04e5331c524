"""QIDO-RS study search latency with 100,000 studies indexed, on SQLite and on PostgreSQL.

For each backend: a fresh database brought to the current schema (Alembic, as ``qamqor`` does),
100,000 studies with their patients, one series and one instance each, bulk-inserted through the
ORM models; then ``qamqor serve`` on that database and a few hundred QIDO-RS searches over HTTP
(HTTP Basic auth, the way viewers call it), one at a time, timed from request to parsed answer.
Query types whose p95 is slow get their query plan printed (EXPLAIN).

Run: ``.venv/bin/python -m bench.qido_latency [--backends sqlite,postgresql] [--studies N]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.orm import Session

from bench import common, servers

console = Console(width=120)

SURNAMES = [
    "AKHMETOV", "ABDRAKHMANOV", "BAIMUKHANOV", "BEKOV", "DZHAKSYBEKOV", "ERMEKOV", "ESENOV",
    "ISMAILOV", "KASYMOV", "KENZHEBEKOV", "KUANYSHEV", "MUKHAMEDOV", "NURLANOV", "OMAROV",
    "ORAZBAEV", "SADYKOV", "SAPAROV", "SEITKALIEV", "SULEIMENOV", "TOKTAROV", "ZHUMABAEV",
    "ZHAKUPOV", "IVANOV", "PETROV", "SMIRNOV", "KUZNETSOV", "POPOV", "VASILIEV", "SOKOLOV",
    "MIKHAILOV", "NOVIKOV", "FEDOROV", "MOROZOV", "VOLKOV", "ALEKSEEV", "LEBEDEV", "SEMENOV",
    "EGOROV", "PAVLOV", "KOZLOV", "STEPANOV", "NIKOLAEV", "ORLOV", "ANDREEV", "MAKAROV",
    "NIKITIN", "ZAKHAROV", "ZAITSEV", "SOLOVIEV", "BORISOV", "KIM", "PAK", "TEN", "LI",
    "MULLER", "SCHMIDT", "YUSUPOV", "KARIMOV", "RAKHIMOV", "TASHKENOV",
]  # fmt: skip
GIVEN_NAMES = [
    "AIDAR", "ASKAR", "ALMAS", "ARMAN", "BAUYRZHAN", "DAMIR", "DASTAN", "ERLAN", "NURLAN",
    "SERIK", "TIMUR", "YERZHAN", "ALEKSANDR", "SERGEI", "DMITRII", "ANDREI", "ALEKSEI", "IVAN",
    "AIGERIM", "AINUR", "AISULU", "AKMARAL", "DANA", "DINARA", "GULNARA", "KARLYGASH",
    "MADINA", "SAULE", "ZHANAR", "ANNA", "ELENA", "OLGA", "TATIANA", "NATALIA", "IRINA",
    "SVETLANA", "MARIA", "EKATERINA",
]  # fmt: skip
INSTITUTIONS = [f"REGIONAL HOSPITAL {n}" for n in range(1, 9)] + [
    f"CITY POLYCLINIC {n}" for n in range(1, 13)
]
MODALITIES = {
    # modality: (share, SOP class, body parts, description)
    "CR": (0.35, "1.2.840.10008.5.1.4.1.1.1", ["CHEST"], "CHEST PA"),
    "DX": (0.25, "1.2.840.10008.5.1.4.1.1.1.1", ["CHEST", "HAND", "KNEE"], "XR"),
    "MG": (0.20, "1.2.840.10008.5.1.4.1.1.1.2", ["BREAST"], "SCREENING MAMMOGRAPHY"),
    "CT": (0.20, "1.2.840.10008.5.1.4.1.1.2", ["CHEST", "HEAD", "ABDOMEN"], "CT"),
}
YEARS = 10
CHUNK = 5000


@dataclass
class Corpus:
    """What the generated index holds that the queries pick from."""

    patient_ids: list[str] = field(default_factory=list)
    accession_numbers: list[str] = field(default_factory=list)
    first_day: date = date(2016, 1, 1)
    last_day: date = date(2025, 12, 31)


# Data ------------------------------------------------------------------------------------------
def _rows(n_studies: int, seed: int) -> tuple[Corpus, dict[str, list[dict[str, Any]]]]:
    from qamqor.pacs.service import name_search_key

    rng = random.Random(seed)
    prefix = common.new_uid_prefix()
    now = datetime.now(UTC)
    last_day = now.date()
    first_day = last_day - timedelta(days=365 * YEARS)
    span = (last_day - first_day).days
    n_patients = max(1, int(n_studies * 0.7))
    corpus = Corpus(first_day=first_day, last_day=last_day)

    patient_ids = [str(v) for v in rng.sample(range(10**11, 10**12), n_patients)]
    patients = []
    for i, patient_id in enumerate(patient_ids):
        sex = rng.choice("MF")
        name = f"{rng.choice(SURNAMES)}{'A' if sex == 'F' else ''}^{rng.choice(GIVEN_NAMES)}"
        birth = first_day - timedelta(days=rng.randrange(0, 365 * 80))
        patients.append(
            {
                "id": i + 1,
                "patient_id": patient_id,
                "issuer_of_patient_id": "",
                "patient_name": name,
                "patient_name_search": name_search_key(name),
                "patient_birth_date": birth.strftime("%Y%m%d"),
                "patient_sex": sex,
                "created_at": now,
            }
        )
    corpus.patient_ids = patient_ids

    accessions = [f"KZ{v}" for v in rng.sample(range(10**9, 10**10), n_studies)]
    corpus.accession_numbers = accessions
    modality_names = list(MODALITIES)
    weights = [MODALITIES[m][0] for m in modality_names]
    studies, series, instances = [], [], []
    for i in range(n_studies):
        # Every patient has a study; the rest go to random patients (some have several).
        patient_pk = i + 1 if i < n_patients else rng.randrange(1, n_patients + 1)
        modality = rng.choices(modality_names, weights)[0]
        _, sop_class, body_parts, description = MODALITIES[modality]
        day = first_day + timedelta(days=rng.randrange(0, span + 1))
        study_date = day.strftime("%Y%m%d")
        study_time = f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        doctor = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN_NAMES)}"
        sop_uid = f"{prefix}3.{i + 1}"
        studies.append(
            {
                "id": i + 1,
                "study_instance_uid": f"{prefix}1.{i + 1}",
                "patient_pk": patient_pk,
                "study_date": study_date,
                "study_time": study_time,
                "accession_number": accessions[i],
                "study_id": str(i + 1),
                "study_description": description,
                "referring_physician_name": doctor,
                "institution_name": rng.choice(INSTITUTIONS),
                "modalities_in_study": modality,
                "sop_classes_in_study": sop_class,
                "number_of_series": 1,
                "number_of_instances": 1,
                "created_at": now,
                "last_instance_at": now,
                "stable_at": now,
            }
        )
        series.append(
            {
                "id": i + 1,
                "series_instance_uid": f"{prefix}2.{i + 1}",
                "study_pk": i + 1,
                "modality": modality,
                "series_number": 1,
                "series_description": description,
                "body_part_examined": rng.choice(body_parts),
                "laterality": rng.choice("LR") if modality == "MG" else "",
                "series_date": study_date,
                "series_time": study_time,
                "performed_procedure_step_start_date": study_date,
                "performed_procedure_step_start_time": study_time,
                "number_of_instances": 1,
                "created_at": now,
            }
        )
        digest = hashlib.sha1(sop_uid.encode(), usedforsecurity=False).hexdigest()
        instances.append(
            {
                "id": i + 1,
                "sop_instance_uid": sop_uid,
                "series_pk": i + 1,
                "sop_class_uid": sop_class,
                "instance_number": 1,
                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                "rows": 2048,
                "columns": 2048,
                "number_of_frames": None,
                "bits_allocated": 16,
                "samples_per_pixel": 1,
                "photometric_interpretation": "MONOCHROME2",
                "image_laterality": "",
                "view_position": "",
                "content_date": study_date,
                "content_time": study_time,
                "file_path": f"{digest[:2]}/{digest[2:4]}/{digest}.dcm",
                "file_size": 8_400_000,
                "source": "bench",
                "received_at": now,
            }
        )
    return corpus, {
        "pacs_patients": patients,
        "pacs_studies": studies,
        "pacs_series": series,
        "pacs_instances": instances,
    }


def populate(url: str, n_studies: int, *, seed: int = 7) -> Corpus:
    """Bring the database at ``url`` to the current schema and bulk-insert the index."""
    from qamqor.capabilities import migration_dirs
    from qamqor.core.db import make_engine, upgrade_database
    from qamqor.pacs.models import Instance, Patient, Series, Study

    upgrade_database(url, migration_dirs())
    started = time.perf_counter()
    corpus, tables = _rows(n_studies, seed)
    models = {
        "pacs_patients": Patient,
        "pacs_studies": Study,
        "pacs_series": Series,
        "pacs_instances": Instance,
    }
    total = sum(len(rows) for rows in tables.values())
    engine = make_engine(url)
    try:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} rows"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("indexing", total=total)
            for name, rows in tables.items():
                progress.update(task, description=f"{name:15}")
                for start in range(0, len(rows), CHUNK):
                    batch = rows[start : start + CHUNK]
                    with Session(engine) as session:
                        session.execute(sa.insert(models[name]), batch)
                        session.commit()
                    progress.advance(task, len(batch))
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                for name in tables:
                    # Rows came with their ids: move the sequences past them.
                    connection.execute(
                        sa.text(
                            f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                            f"(SELECT max(id) FROM {name}))"
                        )
                    )
        if engine.dialect.name == "postgresql":
            # What autovacuum does within a minute of a bulk load; a live archive has statistics.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()
    console.print(
        f"  indexed {n_studies:,} studies ({total:,} rows) in {time.perf_counter() - started:.0f} s"
    )
    return corpus


# Queries ---------------------------------------------------------------------------------------
OHIF = {"offset": "0", "fuzzymatching": "false", "includefield": "00081030,00080060"}
QUERY_TYPES = [
    "no filter, limit=25",
    "PatientName=prefix*",
    "PatientID exact",
    "StudyDate, one month",
    "ModalitiesInStudy=MG + 3 months",
    "AccessionNumber exact",
]


def _yyyymmdd(day: date) -> str:
    return day.strftime("%Y%m%d")


def make_queries(corpus: Corpus, per_type: int, seed: int) -> list[tuple[str, dict[str, str]]]:
    """``per_type`` requests of each type, shuffled; the values come from the index."""
    rng = random.Random(seed)
    span = (corpus.last_day - corpus.first_day).days
    queries: list[tuple[str, dict[str, str]]] = []
    for _ in range(per_type):
        first = corpus.first_day + timedelta(days=rng.randrange(0, span - 31))
        first = first.replace(day=1)
        month_end = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        quarter = corpus.first_day + timedelta(days=rng.randrange(0, span - 92))
        surname = rng.choice(SURNAMES)
        queries += [
            (QUERY_TYPES[0], {"limit": "25"}),
            (
                QUERY_TYPES[1],
                {"PatientName": f"{surname[: rng.randint(3, 5)]}*", "limit": "101", **OHIF},
            ),
            (QUERY_TYPES[2], {"PatientID": rng.choice(corpus.patient_ids), "limit": "101", **OHIF}),
            (
                QUERY_TYPES[3],
                {"StudyDate": f"{_yyyymmdd(first)}-{_yyyymmdd(month_end)}", "limit": "101", **OHIF},
            ),
            (
                QUERY_TYPES[4],
                {
                    "ModalitiesInStudy": "MG",
                    "StudyDate": f"{_yyyymmdd(quarter)}-{_yyyymmdd(quarter + timedelta(days=91))}",
                    "limit": "101",
                    **OHIF,
                },
            ),
            (
                QUERY_TYPES[5],
                {"AccessionNumber": rng.choice(corpus.accession_numbers), "limit": "101", **OHIF},
            ),
        ]  # fmt: skip
    rng.shuffle(queries)
    return queries


@dataclass
class Timings:
    seconds: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, list[int]] = field(default_factory=dict)

    def add(self, kind: str, seconds: float, results: int) -> None:
        self.seconds.setdefault(kind, []).append(seconds)
        self.results.setdefault(kind, []).append(results)

    def all_seconds(self) -> list[float]:
        return [s for values in self.seconds.values() for s in values]


def run_queries(server: servers.QamqorServer, queries: list[tuple[str, dict[str, str]]]) -> Timings:
    timings = Timings()
    url = f"{server.url}/dicom-web/studies"
    headers = {"Accept": "application/dicom+json"}
    with httpx.Client(auth=server.auth, timeout=120, headers=headers) as client:
        for _kind, params in queries[:12]:  # warm-up: connection, Basic auth cache, DB caches
            client.get(url, params=params).raise_for_status()
        for kind, params in queries:
            started = time.perf_counter()
            response = client.get(url, params=params)
            if response.status_code not in (200, 204):
                raise RuntimeError(f"{kind}: HTTP {response.status_code}: {response.text[:300]}")
            body = response.json() if response.content else []
            elapsed = time.perf_counter() - started
            timings.add(kind, elapsed, len(body))
    return timings


# EXPLAIN ---------------------------------------------------------------------------------------
def explain(url: str, params: dict[str, str]) -> str:
    """The plan of the study search ``params`` would run (same SQL as ``query.search``)."""
    from qamqor.core.db import make_engine
    from qamqor.pacs.query import Level, _default_order, build_query

    control = {"limit", "offset", "fuzzymatching", "includefield"}
    criteria = {k: v for k, v in params.items() if k not in control}
    limit = int(params.get("limit", "5000")) + 1
    statement = build_query(Level.STUDY, criteria).order_by(*_default_order(Level.STUDY))
    statement = statement.limit(limit)
    engine = make_engine(url)
    try:
        sql = str(statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
                return "\n".join(f"  {row[-1]}" for row in rows)
            rows = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}").all()
            return "\n".join(f"  {row[0]}" for row in rows)
    finally:
        engine.dispose()


# Runs ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def backend_database(backend: str, workdir: Path) -> Iterator[str | None]:
    """``None`` for SQLite (the data dir's own file), a fresh schema's URL for PostgreSQL."""
    if backend == "postgresql":
        with common.postgres_schema("qamqor_bench_qido") as url:
            yield url
    else:
        yield None


def run_backend(
    backend: str, n_studies: int, per_type: int, slow_ms: float
) -> tuple[Timings, list[str]]:
    notes: list[str] = []
    with (
        common.temp_dir(f"qamqor-bench-qido-{backend}-") as workdir,
        backend_database(backend, workdir) as pg_url,
    ):
        data_dir = workdir / "qamqor-data"
        data_dir.mkdir(parents=True)
        url = pg_url or f"sqlite:///{(data_dir / 'qamqor.db').resolve()}"
        console.print(f"[bold]{backend}[/bold]: indexing {n_studies:,} studies")
        corpus = populate(url, n_studies)
        queries = make_queries(corpus, per_type, seed=11)
        with servers.start_qamqor(workdir, database_url=pg_url) as server:
            console.print(f"  {len(queries)} QIDO-RS searches over HTTP, one at a time")
            timings = run_queries(server, queries)
            server.process.check_alive()
        for kind in QUERY_TYPES:
            p95 = common.percentile(timings.seconds.get(kind, []), 0.95) * 1000
            if p95 > slow_ms:
                params = next(p for k, p in queries if k == kind)
                plan = explain(url, params)
                notes.append(f"{backend}: '{kind}' p95 {p95:.0f} ms; plan:\n{plan}")
    return timings, notes


def print_tables(results: dict[str, Timings]) -> None:
    table = Table(title="QIDO-RS study search latency, ms (p50 / p95)")
    table.add_column("Query")
    for backend in results:
        table.add_column(f"{backend} p50", justify="right")
        table.add_column(f"{backend} p95", justify="right")
    table.add_column("matches (mean)", justify="right")
    rows = [*QUERY_TYPES, "overall"]
    for kind in rows:
        cells = []
        matches = ""
        for timings in results.values():
            values = timings.all_seconds() if kind == "overall" else timings.seconds.get(kind, [])
            cells += [
                f"{common.percentile(values, 0.5) * 1000:.1f}",
                f"{common.percentile(values, 0.95) * 1000:.1f}",
            ]
            if kind != "overall" and not matches:
                found = timings.results.get(kind, [])
                matches = f"{sum(found) / len(found):.1f}" if found else "-"
        table.add_row(kind, *cells, matches)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--per-type", type=int, default=50, help="requests per query type")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--slow-ms", type=float, default=100.0, help="print the plan of types slower (p95)"
    )
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not set(backends) <= {"sqlite", "postgresql"}:
        parser.error("backends are sqlite and postgresql")

    console.print(
        f"QIDO-RS latency, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {common.machine_description()}"
        + (f", PostgreSQL {common.postgres_version()}" if "postgresql" in backends else "")
    )
    results: dict[str, Timings] = {}
    notes: list[str] = []
    failed = False
    started = time.monotonic()
    with common.sigterm_as_exit():
        for backend in backends:
            try:
                timings, backend_notes = run_backend(
                    backend, args.studies, args.per_type, args.slow_ms
                )
            except Exception as exc:
                console.print(f"[red]{backend} failed:[/red] {type(exc).__name__}: {exc}")
                failed = True
                continue
            results[backend] = timings
            notes += backend_notes
    if results:
        print_tables(results)
    for note in notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print(f"Total time {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
