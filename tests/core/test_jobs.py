"""Jobs on Huey with its SQLite storage (the no-server default): retries and failures."""

from __future__ import annotations

import threading
import time

from qamqor.core.errors import QamqorError
from qamqor.core.jobs import JobQueue, make_huey
from qamqor.core.models import JobFailure
from qamqor.runtime import Runtime


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_transient_errors_are_retried_and_permanent_ones_recorded(runtime: Runtime) -> None:
    queue = JobQueue(huey=make_huey(runtime.settings), session_factory=runtime.session_factory)
    attempts: dict[str, int] = {}
    done = threading.Event()

    def flaky(uid: str) -> None:
        attempts[uid] = attempts.get(uid, 0) + 1
        if attempts[uid] < 2:
            raise QamqorError("storage busy", permanent=False)
        done.set()

    def bad_input(uid: str) -> None:
        attempts[uid] = attempts.get(uid, 0) + 1
        raise QamqorError("the image has no laterality")

    queue.register("test.flaky", flaky, retries=3, retry_delay=0)
    queue.register("test.bad", bad_input, retries=3, retry_delay=0)
    queue.start_workers(2)
    try:
        queue.enqueue("test.flaky", "1.2.3")
        queue.enqueue("test.bad", "1.2.4")
        assert done.wait(20)

        def failures() -> list[JobFailure]:
            # A new session each time: one kept open would keep reading its first snapshot.
            with runtime.session_factory() as session:
                return queue.failures(session)

        _wait_for(failures)
        (failure,) = failures()
        assert attempts == {"1.2.3": 2, "1.2.4": 1}  # bad input is not retried
        assert failure.job == "test.bad"
        assert failure.reason == "the image has no laterality"
        assert failure.arguments == "1.2.4"
    finally:
        queue.stop_workers()


def test_queued_jobs_survive_a_restart(runtime: Runtime) -> None:
    ran: list[str] = []
    first = JobQueue(huey=make_huey(runtime.settings), session_factory=runtime.session_factory)
    first.register("test.job", ran.append)
    first.enqueue("test.job", "1.2.5")  # no workers yet: the job waits in jobs.db
    assert first.pending() == 1

    second = JobQueue(huey=make_huey(runtime.settings), session_factory=runtime.session_factory)
    second.register("test.job", ran.append)
    second.start_workers(1)
    try:
        _wait_for(lambda: ran == ["1.2.5"])
    finally:
        second.stop_workers()


def test_an_unexpected_error_is_logged_and_recorded_without_its_message(
    runtime: Runtime, caplog
) -> None:
    """What a library raises may quote what it read (a patient's name, a value's bytes):
    the worker's log and the failure record get its type and where it was raised only."""
    queue = JobQueue(
        huey=make_huey(runtime.settings, immediate=True), session_factory=runtime.session_factory
    )

    def reads_a_bad_value(uid: str) -> None:
        raise ValueError("invalid literal for int(): b'SECRET^PATIENT' \\x01\\x02")

    queue.register("test.leaky", reads_a_bad_value, retries=0)
    caplog.set_level("DEBUG")
    queue.enqueue("test.leaky", "1.2.6")
    assert "SECRET" not in caplog.text and "\\x01" not in caplog.text
    assert "ValueError at test_jobs.py:" in caplog.text  # the type and where, for the bug
    with runtime.session_factory() as session:
        (failure,) = queue.failures(session)
    assert failure.error_type == "UnexpectedJobError"
    assert failure.reason.startswith("ValueError at test_jobs.py:")
    assert "in reads_a_bad_value" in failure.reason and "SECRET" not in failure.reason
