"""The AI API and the AI priority on the studies page: login, roles, order, audit."""

from __future__ import annotations

import numpy as np
from dicom_factory import make_dataset, mammogram, spot_image
from fastapi.testclient import TestClient
from pipeline_helpers import make_pipeline, store
from pydicom.uid import generate_uid
from sqlalchemy import select

from qamqor.ai.models import AIStudy
from qamqor.core.models import AuditEvent
from qamqor.runtime import Runtime
from qamqor.web.app import create_app
from tests.pacs.test_pages import PASSWORD, client_for, read_page


def _studies(runtime: Runtime) -> dict[str, str]:
    """Four studies: a clear spot, a faint one, a CT (not analysed), one not announced yet."""
    pipeline = make_pipeline(runtime)
    uids = {}
    shape = (256, 192)
    clear = spot_image(shape, 40, 80, background=0.1)
    faint = np.clip(spot_image(shape, 40, 80, radius=3, background=0.3) * 0.5, 0, 1)
    for name, ds, date in (
        ("clear", mammogram(clear, StudyDate="20250101"), "20250101"),
        ("faint", mammogram(faint, StudyDate="20250301"), "20250301"),
        ("ct", make_dataset(sop_class="1.2.840.10008.5.1.4.1.1.2", modality="CT"), "20250401"),
        ("pending", mammogram(clear, study_uid=generate_uid()), "20250501"),
    ):
        ds.StudyDate = date
        store(runtime, ds)
        uids[name] = ds.StudyInstanceUID
        if name != "pending" and pipeline.request(ds.StudyInstanceUID):
            pipeline.analyse_study(ds.StudyInstanceUID)
    return uids


def test_api_needs_login_and_role_and_audits(runtime: Runtime) -> None:
    uids = _studies(runtime)
    anonymous = TestClient(create_app(runtime))
    assert anonymous.get("/api/ai/studies").status_code == 401
    registrar = client_for(runtime, role="registrar")
    assert registrar.get("/api/ai/studies").status_code == 403

    with runtime.session_factory() as session:
        from qamqor.core.auth import create_user

        create_user(session, username="rad", password=PASSWORD, role="radiologist")
        session.commit()
    client = TestClient(create_app(runtime))
    auth = ("rad", PASSWORD)
    listed = client.get("/api/ai/studies", params={"order": "priority"}, auth=auth)
    assert listed.status_code == 200
    rows = listed.json()
    assert [r["study_instance_uid"] for r in rows][-1] == uids["ct"]  # not analysed: last
    ranks = [(r["priority_rank"], r["score"] or -1) for r in rows]
    assert ranks == sorted(ranks, reverse=True)
    clear = next(r for r in rows if r["study_instance_uid"] == uids["clear"])
    assert clear["priority"] == "high" and clear["task"] == "mammo"
    assert set(clear["breast_scores"]) == {"L"}
    ct = next(r for r in rows if r["study_instance_uid"] == uids["ct"])
    assert ct["priority"] == "not_analysed" and "modalities: CT" in ct["reason"]

    detail = client.get(f"/api/ai/studies/{uids['clear']}", auth=auth).json()
    (image,) = detail["images"]
    assert image["laterality"] == "L" and image["findings"][0]["score"] == clear["score"]
    assert abs(image["findings"][0]["x"] - 40) <= 6 and abs(image["findings"][0]["y"] - 80) <= 6
    assert image["overlay_sop_instance_uid"] and detail["report_sop_instance_uid"]
    assert client.get(f"/api/ai/studies/{uids['pending']}", auth=auth).status_code == 404
    assert client.get("/api/ai/studies", params={"order": "worst"}, auth=auth).status_code == 422
    assert client.get("/api/ai/failures", auth=auth).status_code == 403  # admins only

    with runtime.session_factory() as session:
        audited = session.scalars(
            select(AuditEvent.object_id).where(
                AuditEvent.object_type == "ai_study", AuditEvent.actor == "rad"
            )
        ).all()
    assert uids["clear"] in audited and uids["ct"] in audited


def test_studies_page_sorts_by_ai_priority_and_shows_it(runtime: Runtime) -> None:
    uids = _studies(runtime)
    with runtime.session_factory() as session:
        rows = {r.study_instance_uid: r for r in session.scalars(select(AIStudy)).all()}
    client = client_for(runtime)
    page = read_page(client.get("/studies").text).studies
    order = [s["uid"] for s in page]
    expected = sorted(
        uids.values(),
        key=lambda u: (
            rows[u].priority_rank if u in rows else -1,
            rows[u].score if u in rows and rows[u].score is not None else -1,
        ),
        reverse=True,
    )
    assert order == expected
    assert order[0] == uids["clear"] and order[-1] == uids["pending"]
    shown = {s["uid"]: s["AI priority"] for s in page}
    assert shown[uids["clear"]] == "High"
    assert shown[uids["ct"]] == "Not analysed"
    assert shown[uids["pending"]] == "—"
    by_date = [s["uid"] for s in read_page(client.get("/studies?sort=date").text).studies]
    assert by_date == [uids["pending"], uids["ct"], uids["faint"], uids["clear"]]
    # Kazakh first: the column speaks the reader's language
    token = client.get("/studies").text.split('name="csrf_token" value="')[1].split('"')[0]
    client.post("/language", data={"lang": "kk", "csrf_token": token})
    assert "ЖИ басымдығы" in client.get("/studies").text
