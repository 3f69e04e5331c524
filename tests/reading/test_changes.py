"""The worklist reloads itself: a change counter bumped by a new AI priority, a signed report
or a claim, read by the page's script through ``GET /reading/api/worklist/changes``."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from qamqor.ai import PRIORITY_SET
from qamqor.reading import REPORT_SIGNED
from qamqor.reading.jobs import attach
from qamqor.runtime import Runtime
from qamqor.web.app import create_app

from .helpers import add_user, chest_study, make_pipeline, store
from .test_pages import csrf_of, login


@pytest.fixture
def listening(runtime: Runtime) -> Iterator[None]:
    attached = attach(runtime, None, sweep=False)
    yield
    attached.stop()


@pytest.fixture
def reader(runtime: Runtime) -> TestClient:
    client = TestClient(create_app(runtime))
    add_user(runtime, "rad")
    login(client, "rad")
    return client


def changes(client: TestClient) -> str:
    response = client.get("/reading/api/worklist/changes")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    token = response.json()["changes"]
    assert isinstance(token, str)
    return token


def test_only_radiologists_poll(runtime: Runtime) -> None:
    anonymous = TestClient(create_app(runtime))
    assert anonymous.get("/reading/api/worklist/changes").status_code == 401
    add_user(runtime, "tech", role="technologist")
    login(anonymous, "tech")
    assert anonymous.get("/reading/api/worklist/changes").status_code == 403


def test_a_new_ai_priority_changes_the_worklist(
    runtime: Runtime, reader: TestClient, listening: None
) -> None:
    page = reader.get("/reading")
    rendered = re.search(r'data-changes="([^"]+)"', page.text)
    assert rendered and rendered.group(1) == changes(reader)  # the page knows where it started
    assert "worklist.js" in page.text
    before = changes(reader)
    runtime.events.publish(PRIORITY_SET, study_instance_uid="1.2.3", priority="high")
    after = changes(reader)
    assert after != before
    runtime.events.publish(REPORT_SIGNED, study_instance_uid="1.2.3", version=1)
    assert changes(reader) != after


def test_the_pipeline_setting_a_priority_changes_the_worklist(
    runtime: Runtime, reader: TestClient, listening: None
) -> None:
    datasets = chest_study()
    store(runtime, *datasets)
    uid = str(datasets[0].StudyInstanceUID)
    pipeline = make_pipeline(runtime)
    pipeline.events = runtime.events
    before = changes(reader)
    pipeline.request(uid)
    assert changes(reader) == before  # queued: nothing to show yet
    pipeline.analyse_study(uid)
    assert changes(reader) != before
    assert uid in reader.get("/reading").text


def test_claims_change_the_worklist_renewals_do_not(
    runtime: Runtime, reader: TestClient, listening: None
) -> None:
    datasets = chest_study()
    store(runtime, *datasets)
    uid = str(datasets[0].StudyInstanceUID)
    start = changes(reader)
    viewer = reader.get(f"/reading/studies/{uid}")  # opening claims it
    claimed = changes(reader)
    assert claimed != start
    token = csrf_of(viewer.text)
    renewed = reader.post(f"/reading/api/studies/{uid}/claim", headers={"X-CSRF-Token": token})
    assert renewed.status_code == 200
    reader.get(f"/reading/studies/{uid}")  # still hers: not a change
    assert changes(reader) == claimed
    released = reader.post(
        f"/reading/studies/{uid}/release", data={"csrf_token": token}, follow_redirects=False
    )
    assert released.status_code == 303
    assert changes(reader) != claimed


def test_stopped_listeners_hear_nothing(runtime: Runtime, reader: TestClient) -> None:
    attached = attach(runtime, None, sweep=False)
    attached.stop()
    attached.stop()  # twice is harmless
    before = changes(reader)
    runtime.events.publish(PRIORITY_SET, study_instance_uid="1.2.3", priority="low")
    assert changes(reader) == before
