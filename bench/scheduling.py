"""Free-slot search and booking throughput on PostgreSQL, on a synthetic region.

A fresh PostgreSQL schema gets the current schema (Alembic, through ``qamqor users add``) and
the demo region of ``qamqor.scheduling.demo`` (1,000,000 residents and 2,000 doctors by
default, two weeks of 20-minute slots); a share of the slots is then marked taken, so searches
skip some. ``qamqor serve`` runs on that database, and:

1. **Free-slot search**, one query at a time: the soonest 10 free slots of a specialty across
   the district with the most doctors, from a random moment in the two weeks. Timed twice:
   the service function (``scheduling.service.free_slots``, SQL only) and the FHIR API over
   HTTP (``GET /fhir/Slot?status=free&specialty=...&district=...&start=ge...&_count=10``,
   HTTP Basic, a registrar).
2. **Bookings per second**, 20 concurrent clients (threads with their own HTTP connection),
   each ``POST /fhir/Appointment`` of a distinct free slot for a distinct resident; then the
   database is checked: one active appointment per booked slot, every slot booked once.
3. **Contention**: the 20 clients race for the same 50 slots; exactly 50 bookings must win,
   every other answer must be 409.

Run: ``.venv/bin/python -m bench.scheduling [--residents N] [--doctors N] [--clients 20]``
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa

from bench.common import (
    BENCH_PASSWORD,
    BENCH_USER,
    machine_description,
    percentile,
    postgres_schema,
    postgres_version,
    temp_dir,
)
from bench.servers import start_qamqor
from qamqor.core.db import make_engine, make_session_factory
from qamqor.scheduling import service
from qamqor.scheduling.demo import generate_region

SPECIALTIES = ["general_practitioner", "therapist", "pediatrician", "gynecologist", "cardiologist"]
IIN_SYSTEM = "http://qamqor.kz/fhir/sid/iin"


@dataclass
class Timings:
    seconds: list[float] = field(default_factory=list)
    failures: int = 0

    def line(self, label: str) -> str:
        ms = [s * 1000 for s in self.seconds]
        return (
            f"{label:<44} n={len(ms):>5}  p50={percentile(ms, 0.5):7.2f} ms  "
            f"p95={percentile(ms, 0.95):7.2f} ms  max={max(ms):7.2f} ms"
        )


def appointment_body(slot_id: int, resident_id: int) -> dict[str, object]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "participant": [{"actor": {"reference": f"Patient/{resident_id}"}, "status": "accepted"}],
    }


def run_clients(
    url: str, clients: int, work: list[list[tuple[int, int]]]
) -> tuple[float, Timings, dict[int, int]]:
    """Each client books its list of (slot, resident); returns wall time, latencies, statuses."""
    timings = Timings()
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(jobs: list[tuple[int, int]]) -> None:
        local: list[float] = []
        codes: dict[int, int] = {}
        with httpx.Client(
            base_url=url,
            auth=(BENCH_USER, BENCH_PASSWORD),
            timeout=60,
            headers={"Content-Type": "application/fhir+json"},
        ) as http:
            http.get("/fhir/Organization?_count=1")  # connection and Basic auth cache warm
            barrier.wait()
            for slot_id, resident_id in jobs:
                started = time.perf_counter()
                response = http.post(
                    "/fhir/Appointment", json=appointment_body(slot_id, resident_id)
                )
                local.append(time.perf_counter() - started)
                codes[response.status_code] = codes.get(response.status_code, 0) + 1
        with lock:
            timings.seconds.extend(local)
            for code, count in codes.items():
                statuses[code] = statuses.get(code, 0) + count

    threads = [threading.Thread(target=client, args=(jobs,)) for jobs in work]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, timings, statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--residents", type=int, default=1_000_000)
    parser.add_argument("--doctors", type=int, default=2000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--taken", type=float, default=0.3, help="share of slots marked taken")
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--bookings", type=int, default=2000)
    args = parser.parse_args()
    ok = True
    print(f"Machine: {machine_description()}; PostgreSQL {postgres_version()}")
    rng = random.Random(1)
    with (
        postgres_schema() as url,
        temp_dir("qamqor-bench-sched") as workdir,
        start_qamqor(workdir, database_url=url, user_role="registrar") as server,
    ):
        engine = make_engine(url)
        started = time.perf_counter()
        summary = generate_region(
            engine, residents=args.residents, doctors=args.doctors, days=args.days, seed=7
        )
        print(
            f"Region: {summary.residents:,} residents, {summary.doctors:,} doctors, "
            f"{summary.facilities} facilities in {summary.districts} districts, "
            f"{summary.slots:,} slots; generated in {time.perf_counter() - started:.1f} s"
        )
        with engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE sched_slots SET status = 'busy-unavailable' WHERE random() < :p"),
                {"p": args.taken},
            )
            connection.exec_driver_sql("ANALYZE sched_slots")
            district_id, doctors_there = connection.execute(
                sa.text(
                    "SELECT f.district_id, count(*) FROM registry_doctors d JOIN "
                    "registry_facilities f ON f.id = d.facility_id GROUP BY f.district_id "
                    "ORDER BY count(*) DESC LIMIT 1"
                )
            ).one()
            residents_there = connection.execute(
                sa.text("SELECT count(*) FROM registry_residents WHERE district_id = :d"),
                {"d": district_id},
            ).scalar_one()
        print(
            f"Searched district: {doctors_there} doctors, {residents_there:,} residents; "
            f"{args.taken:.0%} of slots taken beforehand"
        )
        factory = make_session_factory(engine)
        now = datetime.now(UTC)

        def random_search() -> tuple[str, datetime]:
            offset = timedelta(minutes=rng.randrange(args.days * 24 * 60))
            return rng.choice(SPECIALTIES), now + offset

        service_times = Timings()
        for _ in range(args.searches):
            specialty, start_from = random_search()
            with factory() as session:
                began = time.perf_counter()
                found = service.free_slots(
                    session,
                    specialty=specialty,
                    district_id=district_id,
                    start_from=start_from,
                    limit=10,
                )
                service_times.seconds.append(time.perf_counter() - began)
            service_times.failures += 0 if found or start_from > now + timedelta(days=13) else 1
        specialty, start_from = random_search()
        plan_query = service.free_slots_query(
            specialty=specialty, district_id=district_id, start_from=start_from, limit=10
        )
        compiled = plan_query.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as connection:
            plan = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}").all()
        http_times = Timings()
        with httpx.Client(base_url=server.url, auth=(BENCH_USER, BENCH_PASSWORD)) as http:
            http.get("/fhir/metadata")
            for _ in range(args.searches):
                specialty, start_from = random_search()
                stamp = start_from.strftime("%Y-%m-%dT%H:%M:%SZ")
                began = time.perf_counter()
                response = http.get(
                    f"/fhir/Slot?status=free&specialty={specialty}&district={district_id}"
                    f"&start=ge{stamp}&_count=10"
                )
                http_times.seconds.append(time.perf_counter() - began)
                if response.status_code != 200:
                    http_times.failures += 1
        print()
        print("Free-slot search, soonest 10 of a specialty across the district:")
        print("  " + service_times.line("service (SQL through SQLAlchemy)"))
        print("  " + http_times.line("FHIR GET /fhir/Slot over HTTP"))
        print("  query plan of one search (EXPLAIN ANALYZE):")
        for (line,) in plan:
            print(f"    {line}")
        if http_times.failures:
            print(f"  FAILED: {http_times.failures} searches did not answer 200")
            ok = False

        # Bookings: distinct free slots, distinct residents, across the whole region.
        with engine.connect() as connection:
            slots = (
                connection.execute(
                    sa.text(
                        "SELECT id FROM sched_slots WHERE status = 'free' AND start > now() "
                        "ORDER BY random() LIMIT :n"
                    ),
                    {"n": args.bookings + 50},
                )
                .scalars()
                .all()
            )
            residents = (
                connection.execute(
                    sa.text("SELECT id FROM registry_residents ORDER BY random() LIMIT :n"),
                    {"n": args.bookings + args.clients * 50},
                )
                .scalars()
                .all()
            )
        jobs = list(zip(slots[: args.bookings], residents[: args.bookings], strict=True))
        work = [jobs[i :: args.clients] for i in range(args.clients)]
        wall, timings, statuses = run_clients(server.url, args.clients, work)
        print()
        print(f"Bookings, {args.clients} concurrent clients, POST /fhir/Appointment:")
        print(f"  {len(jobs)} bookings in {wall:.2f} s = {len(jobs) / wall:,.0f} bookings/s")
        print("  " + timings.line("latency per booking"))
        print(f"  answers: {dict(sorted(statuses.items()))}")
        with engine.connect() as connection:
            booked = connection.execute(
                sa.text("SELECT count(*), count(DISTINCT slot_id) FROM sched_appointments")
            ).one()
        if statuses.get(201) != len(jobs) or tuple(booked) != (len(jobs), len(jobs)):
            print(f"  FAILED: expected {len(jobs)} bookings, database has {tuple(booked)}")
            ok = False

        # Contention: everyone wants the same 50 slots.
        contested = slots[args.bookings : args.bookings + 50]
        others = residents[args.bookings :]
        work = []
        for index in range(args.clients):
            order = list(contested)
            rng.shuffle(order)
            mine = others[index * 50 : (index + 1) * 50]
            work.append(list(zip(order, mine, strict=True)))
        wall, timings, statuses = run_clients(server.url, args.clients, work)
        with engine.connect() as connection:
            won = connection.execute(
                sa.text(
                    "SELECT count(*), count(DISTINCT slot_id) FROM sched_appointments "
                    "WHERE slot_id = ANY(:ids) AND status = 'booked'"
                ),
                {"ids": list(contested)},
            ).one()
        print()
        print(f"Contention: {args.clients} clients x 50 attempts at the same 50 slots:")
        print(
            f"  {sum(statuses.values())} attempts in {wall:.2f} s; answers "
            f"{dict(sorted(statuses.items()))}; booked in the database: {won[0]} "
            f"({won[1]} distinct slots)"
        )
        if statuses.get(201) != 50 or tuple(won) != (50, 50) or set(statuses) - {201, 409}:
            print("  FAILED: every contested slot must be booked exactly once, the rest 409")
            ok = False
        engine.dispose()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
