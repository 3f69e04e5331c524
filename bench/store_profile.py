"""Where a C-STORE's server CPU goes: the DICOM node in this process, a sender in another.

The node (``DicomNode``, on its fast path unless ``QAMQOR_DICOM_FAST_PATH=off``; the archive
service, SQLite or PostgreSQL) runs in this process; one pynetdicom sender runs in a spawned
process, so the CPU time this process uses while the instances arrive is the server's. With
``--profile`` every thread of this process runs under cProfile with a per-thread CPU clock
(``time.thread_time``) and the merged statistics are printed.

Run: ``.venv/bin/python -m bench.store_profile [--count 500] [--profile] [--backend postgresql]``
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import multiprocessing
import os
import pstats
import sys
import threading
import time
from typing import Any

from bench import common


def _sender(files: list[str], port: int, called_ae: str, barrier: Any, results: Any) -> None:
    common._store_worker(files, port, called_ae, barrier, results)


class _ThreadProfiles:
    """cProfile in every thread started from now on, on each thread's CPU clock."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        self._run = threading.Thread.run

    def install(self) -> None:
        original = self._run
        profiles = self

        def run(thread: threading.Thread) -> None:
            profile = cProfile.Profile(time.thread_time)
            with profiles._lock:
                profiles.profiles.append(profile)
            profile.enable()
            try:
                original(thread)
            finally:
                profile.disable()

        threading.Thread.run = run  # type: ignore[method-assign]

    def stats(self, main: cProfile.Profile) -> pstats.Stats:
        out = io.StringIO()
        stats = pstats.Stats(main, stream=out)
        for profile in self.profiles:
            with contextlib.suppress(TypeError):  # a profile that never ran
                stats.add(profile)
        return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--lines", type=int, default=45)
    args = parser.parse_args(argv)

    profiles = _ThreadProfiles()
    main_profile = cProfile.Profile(time.thread_time)
    if args.profile:
        profiles.install()

    from qamqor.core.settings import Settings
    from qamqor.pacs.dimse.node import DicomNode
    from qamqor.runtime import build_runtime

    with contextlib.ExitStack() as stack:
        work = stack.enter_context(common.temp_dir("qamqor-store-profile-"))
        url = None
        if args.backend == "postgresql":
            url = stack.enter_context(common.postgres_schema())
        files = common.generate_ct_instances(work / "instances", args.count, size=128)
        values: dict[str, Any] = {
            "data_dir": work / "data",
            "dicom_host": common.HOST,
            "dicom_port": common.free_port(),
            "dicom_accept_unknown_aes": True,
            "dicom_max_associations_per_peer": 64,  # every sender is on this machine
        }
        if url:
            values["database_url"] = url
        settings = Settings(**values)
        runtime = build_runtime(settings)
        stack.callback(runtime.close)
        node = DicomNode(settings=settings, archive=runtime.archive)
        node.start()
        stack.callback(node.stop)

        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(args.associations + 1)
        results = context.Queue()
        shares = [[str(p) for p in files[i :: args.associations]] for i in range(args.associations)]
        senders = [
            context.Process(target=_sender, args=(share, node.port, "QAMQOR", barrier, results))
            for share in shares
        ]
        for sender in senders:
            sender.start()
        barrier.wait(timeout=120)
        times_start, wall_start = os.times(), time.perf_counter()
        if args.profile:
            main_profile.enable()
        reports = [results.get(timeout=1800) for _ in senders]
        if args.profile:
            main_profile.disable()
        times_end = os.times()
        user = times_end.user - times_start.user
        system = times_end.system - times_start.system
        cpu = user + system
        sender_cpu = sum(r.cpu_seconds for r in reports)
        wall = time.perf_counter() - wall_start
        for sender in senders:
            sender.join(timeout=30)
        succeeded = sum(r.succeeded for r in reports)
        errors = [e for r in reports for e in r.errors]
        count = runtime.archive.count()["instances"]
        print(
            f"{succeeded}/{len(files)} stored ({count} rows) in {wall:.2f} s = "
            f"{succeeded / wall:.1f}/s; server CPU "
            f"{1000 * cpu / max(1, succeeded):.2f} ms/instance "
            f"(user {1000 * user / max(1, succeeded):.2f}, system "
            f"{1000 * system / max(1, succeeded):.2f}); senders' CPU "
            f"{1000 * sender_cpu / max(1, succeeded):.2f} ms/instance"
            + (" (profiled: slower)" if args.profile else "")
        )
        if errors:
            print("errors:", errors[:3])
        if args.profile:
            node.stop()
            time.sleep(0.2)
            stats = profiles.stats(main_profile)
            stats.stream = sys.stdout  # type: ignore[attr-defined]
            stats.sort_stats(args.sort).print_stats(args.lines)
    return 0 if succeeded == len(files) else 1


if __name__ == "__main__":
    sys.exit(main())
