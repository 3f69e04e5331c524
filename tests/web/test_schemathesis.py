"""Schemathesis over the whole OpenAPI: no request may make the server fail (5xx) or drop the
connection.

Every operation of ``/api/openapi.json`` is called by an admin (HTTP Basic) against a live
server holding a small synthetic region (so FHIR reads and searches hit real rows) and one
stored DICOM instance. Cases: the coverage phase (boundary and invalid values, deterministic)
and Hypothesis fuzzing, positive and negative, derandomized (a fixed seed), with a bounded
number of examples per operation so the test takes a minute or two on two cores.

A case counts as a server error when the answer is 5xx (``not_a_server_error``), when the
connection is reset, or when no answer comes within ``TIMEOUT``. The figures are printed
(``pytest -s``): operations, cases, server errors, and each distinct cause with the place the
server's traceback ends. Run alone, or with a bigger budget::

    .venv/bin/pytest -s tests/web/test_schemathesis.py
    QAMQOR_FUZZ_EXAMPLES=100 QAMQOR_FUZZ_COVERAGE=400 pytest -s tests/web/test_schemathesis.py

With the defaults: 43 operations, 2,849 cases per database, about 75 s each on two cores.
"""

from __future__ import annotations

import faulthandler
import io
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from qamqor.runtime import Runtime
from tests.conftest import LiveServer

#: Fuzzed examples per operation and generation mode, and coverage cases per operation.
EXAMPLES = int(os.environ.get("QAMQOR_FUZZ_EXAMPLES", "40"))
COVERAGE_CASES = int(os.environ.get("QAMQOR_FUZZ_COVERAGE", "150"))
ADMIN = ("admin", "admin-password")
#: Seconds one request may take (an answer that never comes counts as a server error).
TIMEOUT = 30


@dataclass
class Tally:
    operations: int = 0
    cases: int = 0
    server_errors: int = 0
    by_operation: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    tracebacks: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)
    hung: bool = False


class _Tracebacks(logging.Handler):
    """Collects the last line of every traceback the server logs (one per distinct cause)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []  # Handler.handle() holds the handler's lock around emit()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
            self.lines.append(f"{type(exc).__name__} at {where.split('site-packages/')[-1]}")


def _seed(runtime: Runtime) -> None:
    """A small region, an admin, and one DICOM instance in the archive."""
    from qamqor.core.auth import create_user
    from qamqor.pacs.parsing import parse_part10
    from qamqor.scheduling.demo import generate_region
    from tests.ai.dicom_factory import chest

    generate_region(runtime.engine, residents=300, doctors=30, days=3, seed=7)
    with runtime.session_factory() as session:
        create_user(session, username=ADMIN[0], password=ADMIN[1], role="admin")
        session.commit()
    buffer = io.BytesIO()
    chest().save_as(buffer, enforce_file_format=True)
    runtime.archive.store_instances([parse_part10(buffer.getvalue())], source="test")


@pytest.fixture
def fuzz_server(runtime: Runtime) -> Iterator[LiveServer]:
    _seed(runtime)
    server = LiveServer(runtime)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _send(case: Any, server: LiveServer, http: requests.Session, tally: Tally) -> None:
    tally.cases += 1
    label = case.operation.label
    try:
        response = case.call(base_url=server.url, session=http, timeout=TIMEOUT)
    except requests.RequestException as exc:  # a reset connection or a hang: as bad as a 500
        tally.server_errors += 1
        tally.by_operation[label] += 1
        tally.examples.setdefault(label, f"{type(exc).__name__}: {case.as_curl_command()}")
        if isinstance(exc, requests.Timeout) and not tally.hung:
            tally.hung = True
            with open(os.environ.get("QAMQOR_FUZZ_STACKS", "/dev/null"), "w") as out:
                faulthandler.dump_traceback(out, all_threads=True)
        return
    try:
        case.validate_response(response, checks=[not_a_server_error])
        failed = response.status_code >= 500
    except FailureGroup:  # what not_a_server_error raises (a BaseExceptionGroup)
        failed = True
    if failed:
        tally.server_errors += 1
        tally.by_operation[label] += 1
        tally.examples.setdefault(label, f"{response.status_code}: {case.as_curl_command()}")


def _fuzz(operation: Any, mode: GenerationMode, send: Any) -> None:
    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,  # the fixed seed: the same cases on every run
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        send(case)

    run()


def test_no_operation_answers_a_server_error(fuzz_server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/api/openapi.json")
    tally = Tally()
    tracebacks = _Tracebacks()
    logging.getLogger("uvicorn.error").addHandler(tracebacks)
    http = requests.Session()
    http.auth = ADMIN

    def send(case: Any) -> None:
        _send(case, fuzz_server, http, tally)

    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            tally.operations += 1
            generation = schema.config.generation_for(operation=operation)
            coverage = schema.iter_coverage_cases(
                operation, generation_modes=list(GenerationMode), generation_config=generation
            )
            for n, case in enumerate(coverage):
                if n >= COVERAGE_CASES:
                    break
                send(case)
            for mode in GenerationMode:
                try:
                    _fuzz(operation, mode, send)
                except hypothesis.errors.Unsatisfiable:
                    tally.skipped.append(f"{operation.label} ({mode.value})")
                except Exception as exc:  # schemathesis cannot negate some operations
                    if type(exc).__module__.startswith("schemathesis"):
                        tally.skipped.append(f"{operation.label} ({mode.value}): {exc}")
                    else:
                        raise
    finally:
        logging.getLogger("uvicorn.error").removeHandler(tracebacks)

    tally.tracebacks.update(tracebacks.lines)
    print(
        f"\nschemathesis: {tally.operations} operations, {tally.cases} cases, "
        f"{tally.server_errors} server errors, {len(tally.tracebacks)} distinct causes"
    )
    for label, count in tally.by_operation.most_common():
        print(f"  {count:5d}  {label}\n         {tally.examples[label][:300]}")
    for line, count in tally.tracebacks.most_common():
        print(f"  {count:5d}x {line}")
    for skipped in tally.skipped:
        print(f"  not generated: {skipped[:200]}")
    assert tally.operations >= 30
    assert tally.server_errors == 0, dict(tally.by_operation)
