"""The reading pages over HTTP: who gets in, audit, CSRF, session timeout, the report form."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from sqlalchemy import select

from qamqor.core.models import AuditEvent
from qamqor.core.timezone import local_time
from qamqor.reading.models import Report
from qamqor.runtime import Runtime
from qamqor.web.app import create_app

from .helpers import PASSWORD, add_user, mammo_study, set_ai_result, store


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def login(client: TestClient, username: str) -> None:
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303


@pytest.fixture
def study(runtime: Runtime) -> str:
    datasets = mammo_study()
    store(runtime, *datasets)
    uid = str(datasets[0].StudyInstanceUID)
    set_ai_result(
        runtime, uid, priority="high", score=0.77, task="mammo", breast_scores="L=0.77;R=0.12"
    )
    return uid


@pytest.fixture
def client(runtime: Runtime) -> TestClient:
    return TestClient(create_app(runtime))


def _audit(runtime: Runtime, action: str, uid: str) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action, AuditEvent.object_id == uid)
            )
        )


def test_only_radiologists_and_admins_get_in(
    runtime: Runtime, client: TestClient, study: str
) -> None:
    response = client.get("/reading", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    assert client.get("/reading/api/studies/" + study).status_code == 401
    add_user(runtime, "tech", role="technologist")
    login(client, "tech")
    assert client.get("/reading").status_code == 403
    assert client.get(f"/reading/studies/{study}").status_code == 403
    assert client.get("/reading/api/studies/" + study).status_code == 403
    for username, role in (("rad", "radiologist"), ("boss", "admin")):
        other = TestClient(create_app(runtime))
        add_user(runtime, username, role=role)
        login(other, username)
        page = other.get("/reading")
        assert page.status_code == 200 and study in page.text


def test_listing_and_opening_are_audited(runtime: Runtime, client: TestClient, study: str) -> None:
    add_user(runtime, "rad")
    login(client, "rad")
    page = client.get("/reading?lang=x")
    assert "ABENOVA AIGERIM" in page.text and "77%" in page.text
    assert [e.actor for e in _audit(runtime, "view", study)] == ["rad"]
    viewer = client.get(f"/reading/studies/{study}")
    assert viewer.status_code == 200
    (opened,) = _audit(runtime, "open", study)
    assert opened.actor == "rad" and opened.object_type == "study"
    data = json.loads(re.search(r'id="viewer-data">(.*?)</script>', viewer.text, re.S).group(1))
    assert [i["hanging"] for i in data["hanging"]] == ["RCC", "LCC", "RMLO", "LMLO"]
    # The viewer fetches a prior through the API: audited too.
    assert client.get("/reading/api/studies/" + study).json()["study"] == study
    assert len(_audit(runtime, "open", study)) == 2


def test_another_radiologist_sees_who_reads_the_study(
    runtime: Runtime, client: TestClient, study: str
) -> None:
    add_user(runtime, "aliya")
    add_user(runtime, "berik")
    login(client, "aliya")
    client.get(f"/reading/studies/{study}")
    other = TestClient(create_app(runtime))
    login(other, "berik")
    assert "aliya" in other.get("/reading").text
    viewer = other.get(f"/reading/studies/{study}")
    assert "aliya" in viewer.text and 'name="take_over"' in viewer.text
    token = csrf_of(viewer.text)
    renewed = other.post(f"/reading/api/studies/{study}/claim", headers={"X-CSRF-Token": token})
    assert renewed.status_code == 409 and "aliya" in renewed.json()["detail"]
    # Berik takes the study over: Aliya's page now says who has it; the take-over is audited.
    taken = other.post(
        f"/reading/studies/{study}/claim",
        data={"csrf_token": token, "take_over": "1"},
        follow_redirects=False,
    )
    assert taken.status_code == 303
    assert "berik" in client.get(f"/reading/studies/{study}").text
    assert [e.detail for e in _audit(runtime, "claim", study)] == ["taken over"]


def test_state_changes_need_the_csrf_token(
    runtime: Runtime, client: TestClient, study: str
) -> None:
    add_user(runtime, "rad")
    login(client, "rad")
    for path in ("claim", "release", "urgency", "report", "report/amend"):
        response = client.post(
            f"/reading/studies/{study}/{path}", data={"urgency": "2", "template": "mammo"}
        )
        assert response.status_code == 403, path
    assert client.post(f"/reading/api/studies/{study}/claim").status_code == 403
    with runtime.session_factory() as session:
        assert session.scalar(select(Report)) is None


def test_sessions_time_out(
    runtime: Runtime, client: TestClient, study: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_user(runtime, "rad")
    login(client, "rad")
    assert client.get("/reading").status_code == 200
    later = time.time() + runtime.settings.session_timeout_minutes * 60 + 5
    monkeypatch.setattr(time, "time", lambda: later)
    response = client.get("/reading", follow_redirects=False)
    assert response.status_code == 303 and "/login" in response.headers["location"]


def test_fill_save_sign_and_download(runtime: Runtime, client: TestClient, study: str) -> None:
    add_user(runtime, "rad", full_name="Aliya Serikova")
    login(client, "rad")
    token = csrf_of(client.get(f"/reading/studies/{study}").text)
    form = {
        "csrf_token": token,
        "template": "mammo",
        "density": "b",
        "birads_right": "1",
        "birads_left": "4",
        "finding0_kind": "mass",
        "finding0_side": "L",
        "finding0_location": "uoq",
        "finding0_size": "twelve",
        "impression": "Күдікті түзіліс",
        "action": "sign",
    }
    refused = client.post(f"/reading/studies/{study}/report", data=form)
    assert refused.status_code == 422
    assert "finding0" not in refused.text or "sizes are numbers" in refused.text
    assert "Күдікті түзіліс" in refused.text  # what was typed is kept
    with runtime.session_factory() as session:
        assert session.scalar(select(Report)) is None
    signed = client.post(
        f"/reading/studies/{study}/report",
        data={**form, "finding0_size": "12,5"},
        follow_redirects=False,
    )
    assert signed.status_code == 303
    page = client.get(f"/reading/studies/{study}")
    assert "Aliya Serikova" in page.text and ".pdf" in page.text
    with runtime.session_factory() as session:
        report = session.scalar(select(Report))
        assert report is not None and report.status == "signed"
    # The signature's time is the region's (Asia/Almaty), as everywhere else on the screens.
    assert report.signed_at is not None
    shown = local_time(report.signed_at, ZoneInfo("Asia/Almaty")).strftime("%Y-%m-%d %H:%M")
    assert shown in page.text and " UTC" not in page.text
    pdf = client.get(f"/reading/reports/{report.id}.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-")
    assert len(_audit(runtime, "report_sign", study)) == 1
    assert len(_audit(runtime, "report_pdf", study)) == 1
    # The SR is in the archive for any viewer: QIDO-RS finds it.
    found = client.get(f"/dicom-web/studies/{study}/instances", params={"Modality": "SR"})
    uids = [i["00080018"]["Value"][0] for i in found.json()]
    assert report.sr_sop_instance_uid in uids
    # Reported studies leave the default worklist.
    assert study not in client.get("/reading").text
    assert study in client.get("/reading?status=reported").text


def test_the_worklist_speaks_kazakh_first_then_russian(
    runtime: Runtime, client: TestClient, study: str
) -> None:
    add_user(runtime, "rad")
    login(client, "rad")
    assert "Жұмыс тізімі" in client.get("/reading").text
    token = csrf_of(client.get("/reading").text)
    client.post("/language", data={"lang": "ru", "next": "/reading", "csrf_token": token})
    assert "Рабочий список" in client.get("/reading").text


NO_LATERALITY = {
    "kk": "жағы көрсетілмеген маммограмма",
    "ru": "маммограмма без указания стороны",
    "en": "a mammogram with no laterality",
}


def test_why_a_study_was_not_analysed_is_shown_in_the_readers_language(
    runtime: Runtime, client: TestClient
) -> None:
    """The real pipeline decides the reason before anyone reads it; each page translates it."""
    from qamqor.ai.models import AIStudy

    from .helpers import analyse

    datasets = mammo_study(spot=False)
    for ds in datasets:
        ds.ImageLaterality = ""  # no side: the analyser cannot orient the breast
    store(runtime, *datasets)
    uid = str(datasets[0].StudyInstanceUID)
    analyse(runtime, uid)
    with runtime.session_factory() as session:
        row = session.scalar(select(AIStudy).where(AIStudy.study_instance_uid == uid))
        assert row is not None and row.priority == "not_analysed"
        assert NO_LATERALITY["en"] in row.reason  # English for the API and scripts
    add_user(runtime, "rad")
    add_user(runtime, "archivist", role="admin")
    for username in ("rad", "archivist"):
        login(client, username)
        for language in ("kk", "ru", "en"):
            token = csrf_of(client.get("/reading").text)
            client.post("/language", data={"lang": language, "next": "/", "csrf_token": token})
            pages = [client.get("/reading").text, client.get(f"/reading/studies/{uid}").text]
            if username == "archivist":
                pages.append(client.get("/studies").text)  # the tooltip of the AI column
            for page in pages:
                assert NO_LATERALITY[language] in page
                others = [text for lang, text in NO_LATERALITY.items() if lang != language]
                assert not [text for text in others if text in page]
        client.cookies.clear()
    api = client.get(f"/api/ai/studies/{uid}", auth=("rad", PASSWORD)).json()
    assert api["reasons"][0]["msgid"] == (
        "a mammogram with no laterality (ImageLaterality or Laterality)"
    )
    assert api["images"][0]["reasons"][0]["text"].startswith(NO_LATERALITY["en"])


def test_the_modality_filter_offers_what_the_archive_holds(
    runtime: Runtime, client: TestClient, study: str, shared_dicom_dir: Path
) -> None:
    """CT and whatever else arrived (digitised films: RG, OT) can be chosen; modalities with
    no study (DX here) and series without images (SR) are not offered."""
    store(
        runtime,
        *(dcmread(shared_dicom_dir / name) for name in ("RG1_J2KI.dcm", "CT1_J2KI.dcm")),
    )
    add_user(runtime, "rad")
    login(client, "rad")
    html = client.get("/reading").text
    select_html = html[html.index('id="w-modality"') :]
    select_html = select_html[: select_html.index("</select>")]
    offered = re.findall(r'<option value="([A-Z]+)"', select_html)
    assert offered == ["CR", "CT", "MG"], offered
    assert study in client.get("/reading?modality=MG").text
    assert study not in client.get("/reading?modality=CT").text
