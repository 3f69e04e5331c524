"""Instances stored per second: Qamqor against Orthanc, same load, same machine.

Three modes, each on an empty archive (a fresh server and data directory per run):

* C-STORE of N small CT instances (default 2,000) over one association;
* the same N over 8 concurrent associations (N/8 each, one sending process per association);
* STOW-RS: one request carrying 500 of those instances.

The C-STORE clients are DCMTK's ``storescu`` (``--client dcmtk``, the default) or pynetdicom
(``--client pynetdicom``), one process per association, with TCP_NODELAY; STOW-RS uses httpx.
After each run the archive's instance count must equal what was sent.

Each mode runs ``--rounds`` times (3 by default), the two systems one after the other, the
first of each round taking turns; the table gives each system's median and the range of the
rounds' ratios. On a shared 2-core machine one run of a few seconds can meet another
tenant's load: single runs of the same code differed by a quarter.

Run: ``.venv/bin/python -m bench.store_throughput [--backend postgresql]``
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import common, servers

console = Console(width=120)

MODES = {
    "1": "C-STORE, 1 association",
    "8": "C-STORE, {n} associations",
    "stow": "STOW-RS, 1 request of {k}",
}


@dataclass
class RunResult:
    system: str
    mode: str
    instances: int
    seconds: float = 0.0
    error: str = ""
    version: str = ""
    cpu_seconds: float = 0.0
    """CPU time the server used during the run (user + system)."""
    client_cpu_seconds: float = 0.0
    """CPU time the C-STORE senders used."""

    @property
    def rate(self) -> float:
        return self.instances / self.seconds if self.seconds and not self.error else 0.0


def _run(
    system: str,
    mode: str,
    *,
    work: Path,
    files: list[Path],
    stow_body: tuple[bytes, str] | None,
    stow_count: int,
    associations: int,
    backend: str,
    qamqor_settings: dict[str, str] | None = None,
    client: str = "dcmtk",
    round_: int = 0,
) -> RunResult:
    expected = stow_count if mode == "stow" else len(files)
    result = RunResult(system, mode, expected)
    with contextlib.ExitStack() as stack:
        # Kept until the script ends, not removed after the run: on a file system without a
        # journal (ext4 here) every file created within minutes of a mass deletion makes the
        # kernel skip over the recently freed inodes (``recently_deleted``), which cost the
        # run after a deletion up to 1 ms of system CPU per instance on this machine.
        run_dir = work / f"run-{system}-{mode}-{round_ + 1}"
        run_dir.mkdir()
        server: servers.OrthancServer | servers.QamqorServer
        if system == "orthanc":
            database = (
                stack.enter_context(common.postgres_database()) if backend == "postgresql" else None
            )
            orthanc = stack.enter_context(
                servers.start_orthanc(run_dir, threads=max(8, associations), database=database)
            )
            result.version = orthanc.version()
            server = orthanc
        else:
            url = stack.enter_context(common.postgres_schema()) if backend == "postgresql" else None
            server = stack.enter_context(
                servers.start_qamqor(run_dir, database_url=url, settings=qamqor_settings)
            )
        cpu_before = server.process.cpu_seconds()
        before = server.count_instances()
        if before != 0:
            result.error = f"archive not empty at start ({before} instances)"
            return result
        if mode == "stow":
            assert stow_body is not None
            seconds, response = common.stow(server.stow_url, *stow_body, auth=server.auth)
            if response.status_code != 200:
                result.error = (
                    f"STOW-RS answered HTTP {response.status_code}: {response.text[:300]}"
                )
        else:
            n = 1 if mode == "1" else associations
            send = common.store_with_storescu if client == "dcmtk" else common.store_concurrently
            seconds, report = send(
                files, port=server.dicom_port, called_ae=server.ae_title, associations=n
            )
            result.client_cpu_seconds = report.cpu_seconds
            if report.failed or report.succeeded != len(files):
                result.error = (
                    f"{report.succeeded} of {len(files)} C-STOREs succeeded; "
                    f"{'; '.join(report.errors[:3])}"
                )
        result.cpu_seconds = server.process.cpu_seconds() - cpu_before
        stored = server.count_instances()
        if not result.error and stored != expected:
            result.error = f"{stored} instances in the archive after sending {expected}"
        server.process.check_alive()
        result.seconds = seconds
    return result


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _print_table(
    results: dict[tuple[str, str], list[RunResult]],
    modes: list[str],
    *,
    orthanc_label: str,
    qamqor_label: str,
    associations: int,
    stow_count: int,
    rounds: int,
) -> None:
    table = Table(
        title=f"Instances stored per second, median of {rounds} round(s) (higher is better)"
    )
    table.add_column("Mode")
    table.add_column(orthanc_label, justify="right")
    table.add_column(qamqor_label, justify="right")
    table.add_column("Qamqor / Orthanc (rounds)", justify="right")
    table.add_column("server CPU ms/instance, Orthanc / Qamqor", justify="right")

    def failed(runs: list[RunResult]) -> bool:
        return any(r.error for r in runs)

    def rate(runs: list[RunResult]) -> float:
        return 0.0 if not runs or failed(runs) else _median([r.rate for r in runs])

    def cell(runs: list[RunResult]) -> str:
        if not runs:
            return "-"
        return "failed" if failed(runs) else f"{rate(runs):.1f}"

    def cpu(runs: list[RunResult]) -> str:
        if not runs or failed(runs):
            return "-"
        return f"{_median([1000 * r.cpu_seconds / r.instances for r in runs]):.1f}"

    for mode in modes:
        label = MODES[mode].format(n=associations, k=stow_count)
        orthanc = results.get(("orthanc", mode), [])
        qamqor = results.get(("qamqor", mode), [])
        ratio = "-"
        if rate(orthanc) and rate(qamqor):
            each = [q.rate / o.rate for o, q in zip(orthanc, qamqor, strict=False)]
            ratio = f"{rate(qamqor) / rate(orthanc):.2f}"
            if len(each) > 1:
                ratio += f" ({min(each):.2f}-{max(each):.2f})"
        table.add_row(label, cell(orthanc), cell(qamqor), ratio, f"{cpu(orthanc)} / {cpu(qamqor)}")
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="instances per C-STORE run")
    parser.add_argument("--associations", type=int, default=8, help="concurrent associations")
    parser.add_argument("--stow-count", type=int, default=500, help="instances in the STOW-RS")
    parser.add_argument("--size", type=int, default=128, help="rows and columns of each image")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument(
        "--systems", default="orthanc,qamqor", help="comma-separated: orthanc, qamqor"
    )
    parser.add_argument("--modes", default="1,8,stow", help="comma-separated: 1, 8, stow")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of each mode and system (medians reported)"
    )
    parser.add_argument(
        "--client",
        choices=["dcmtk", "pynetdicom"],
        default="dcmtk",
        help="C-STORE senders: DCMTK storescu processes, or pynetdicom processes",
    )
    parser.add_argument(
        "--qamqor-setting",
        action="append",
        default=[],
        metavar="QAMQOR_NAME=VALUE",
        help="a setting for the Qamqor server (repeatable), e.g. QAMQOR_DICOM_PROCESSES=1",
    )
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(systems) <= {"orthanc", "qamqor"} or not set(modes) <= set(MODES):
        parser.error("unknown system or mode")
    qamqor_settings = dict(item.split("=", 1) for item in args.qamqor_setting)
    if not all(name.startswith("QAMQOR_") for name in qamqor_settings):
        parser.error("--qamqor-setting takes QAMQOR_NAME=VALUE")
    if args.count % args.associations:
        parser.error("--count must be a multiple of --associations")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    results: dict[tuple[str, str], list[RunResult]] = {}
    orthanc_label, qamqor_label = "Orthanc", f"Qamqor ({args.backend})"
    orthanc_index = f" ({args.backend})"
    with common.sigterm_as_exit(), common.temp_dir("qamqor-bench-store-") as work:
        started = time.monotonic()
        console.print(
            f"Store throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"{common.machine_description()}"
        )
        files = common.generate_ct_instances(
            work / "instances", args.count, studies=10, series_per_study=2, size=args.size
        )
        size_kb = files[0].stat().st_size / 1024
        console.print(
            f"Generated {len(files)} CT instances, {args.size}x{args.size} 16-bit, explicit VR "
            f"little endian, {size_kb:.0f} KiB each, 10 studies x 2 series; C-STORE senders: "
            + ("DCMTK storescu" if args.client == "dcmtk" else "pynetdicom")
        )
        stow_body = None
        if "stow" in modes:
            stow_body = common.multipart_related(files[: args.stow_count])
        runs = [
            (mode, round_, system)
            for mode in modes
            for round_ in range(args.rounds)
            # the first of a round takes turns: neither system always follows the other
            for system in (systems if round_ % 2 == 0 else systems[::-1])
        ]
        for mode, round_, system in runs:
            label = MODES[mode].format(n=args.associations, k=args.stow_count)
            if args.rounds > 1:
                label += f" #{round_ + 1}"
            try:
                result = _run(
                    system,
                    mode,
                    work=work,
                    files=files,
                    stow_body=stow_body,
                    stow_count=args.stow_count,
                    associations=args.associations,
                    backend=args.backend,
                    qamqor_settings=qamqor_settings,
                    client=args.client,
                    round_=round_,
                )
            except Exception as exc:
                result = RunResult(system, mode, 0, error=f"{type(exc).__name__}: {exc}")
            results.setdefault((system, mode), []).append(result)
            if result.error:
                console.print(f"  {system:8} {label:31} [red]FAILED[/red]: {result.error}")
            else:
                console.print(
                    f"  {system:8} {label:31} {result.instances} instances in "
                    f"{result.seconds:5.1f} s = {result.rate:5.1f}/s, server CPU "
                    f"{1000 * result.cpu_seconds / result.instances:4.1f} ms/instance"
                    + (
                        f" (senders {1000 * result.client_cpu_seconds / result.instances:.1f})"
                        if result.client_cpu_seconds
                        else ""
                    )
                    + ", count ok"
                )
        versions = {r.version for runs_ in results.values() for r in runs_ if r.version}
        if versions:
            orthanc_label = f"Orthanc {versions.pop()}{orthanc_index}"
        _print_table(
            results,
            modes,
            orthanc_label=orthanc_label,
            qamqor_label=qamqor_label,
            associations=args.associations,
            stow_count=args.stow_count,
            rounds=args.rounds,
        )
        console.print(f"Total time {time.monotonic() - started:.0f} s")
    return 1 if any(r.error for runs_ in results.values() for r in runs_) else 0


if __name__ == "__main__":
    sys.exit(main())
