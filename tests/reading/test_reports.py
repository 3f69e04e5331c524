"""Reports: drafts, signing into the archive (Comprehensive SR + Encapsulated PDF), amendments
that keep the signed version, agreement with the AI. On SQLite and PostgreSQL."""

from __future__ import annotations

import io

import highdicom as hd
import pytest
from pydicom import dcmread
from sqlalchemy import select

from qamqor.reading import service
from qamqor.reading.documents import ENCAPSULATED_PDF
from qamqor.reading.enums import Agreement, FollowUp, suggested_follow_up
from qamqor.reading.errors import InvalidReportError, ReportSignedError
from qamqor.reading.models import ReadingStudy
from qamqor.reading.schemas import ReportContent
from qamqor.runtime import Runtime

from .helpers import add_user, chest_study, mammo_study, set_ai_result, store

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
KAZAKH_IMPRESSION = "Сол жақ сүт безінде күдікті түзіліс. Биопсия ұсынылады."


def _mammo(runtime: Runtime, priority: str = "high") -> str:
    datasets = mammo_study()
    store(runtime, *datasets)
    uid = str(datasets[0].StudyInstanceUID)
    set_ai_result(
        runtime, uid, priority=priority, score=0.8, task="mammo", breast_scores="L=0.8;R=0.1"
    )
    return uid


def _content(**changes: object) -> ReportContent:
    values: dict[str, object] = {
        "template": "mammo",
        "density": "c",
        "birads_right": "1",
        "birads_left": "4",
        "breast_findings": [{"side": "L", "kind": "mass", "location": "uoq", "size_mm": 14}],
        "impression": KAZAKH_IMPRESSION,
    }
    values.update(changes)
    return ReportContent.model_validate(values)


def _sign(runtime: Runtime, uid: str, actor: service.Actor, content: ReportContent, **kw: str):  # type: ignore[no-untyped-def]
    with runtime.session_factory() as session:
        service.save_draft(
            session, study_instance_uid=uid, actor=actor, content=content, language="kk", **kw
        )
        session.commit()
        return service.sign(
            session,
            archive=runtime.archive,
            study_instance_uid=uid,
            actor=actor,
            agreement=service.suggested_agreement(content, service.ai_priority_of(session, uid)),
        )


def _instances(runtime: Runtime, uid: str, sop_class: str) -> list[str]:
    with runtime.session_factory() as session:
        return [
            i.sop_instance_uid
            for i in runtime.archive.instances_of(session, study_instance_uid=uid)
            if i.sop_class_uid == sop_class
        ]


def test_a_signed_report_is_a_coded_sr_and_a_pdf_in_the_archive(runtime: Runtime) -> None:
    uid = _mammo(runtime)
    actor = service.Actor(
        add_user(runtime, "aliya", full_name="Aliya Serikova"), "aliya", "Aliya Serikova"
    )
    report = _sign(runtime, uid, actor, _content())
    assert report.status == "signed" and report.version == 1

    (sr_uid,) = _instances(runtime, uid, COMPREHENSIVE_SR)
    assert sr_uid == report.sr_sop_instance_uid
    sr = dcmread(io.BytesIO(runtime.archive.read_instance_bytes(sr_uid)))
    assert sr.StudyInstanceUID == uid and sr.PatientID == "880101300123"
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Serikova^Aliya"
    parsed = hd.sr.ComprehensiveSR.from_dataset(sr)
    items = parsed.ContentSequence
    codes = {
        (
            i.ConceptNameCodeSequence[0].CodeValue,
            getattr(i, "ConceptCodeSequence", [None])[0].CodeValue
            if "ConceptCodeSequence" in i
            else None,
        )
        for i in items
    }
    assert ("111005", "BIRADS-4") in codes and ("111005", "BIRADS-1") in codes
    assert ("density", "density-c") in codes
    left = next(
        i
        for i in items
        if "ConceptCodeSequence" in i and i.ConceptCodeSequence[0].CodeValue == "BIRADS-4"
    )
    assert left.ContentSequence[0].ConceptCodeSequence[0].CodeValue == "7771000"  # left
    impression = next(i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "121073")
    assert impression.TextValue == KAZAKH_IMPRESSION  # UTF-8 kept, not "?"

    (pdf_uid,) = _instances(runtime, uid, ENCAPSULATED_PDF)
    encapsulated = dcmread(io.BytesIO(runtime.archive.read_instance_bytes(pdf_uid)))
    assert encapsulated.MIMETypeOfEncapsulatedDocument == "application/pdf"
    pdf = service.report_pdf(runtime.archive, report)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert b"DejaVu" in pdf  # a Unicode font is embedded for the Cyrillic text
    with runtime.session_factory() as session:
        reading = session.scalar(select(ReadingStudy).where(ReadingStudy.study_instance_uid == uid))
        assert reading is not None
        assert (reading.status, reading.agreement, reading.ai_priority) == (
            "reported",
            "agree",
            "high",
        )
        assert reading.claimed_by == ""


def test_an_incomplete_report_is_refused_and_nothing_is_written(runtime: Runtime) -> None:
    uid = _mammo(runtime)
    actor = service.Actor(add_user(runtime, "aliya"), "aliya")
    with pytest.raises(InvalidReportError, match="birads_left"):
        _sign(runtime, uid, actor, _content(birads_left=None))
    assert _instances(runtime, uid, COMPREHENSIVE_SR) == []
    assert _instances(runtime, uid, ENCAPSULATED_PDF) == []
    with runtime.session_factory() as session:
        (draft,) = service.reports_of(session, uid)
        assert draft.status == "draft"
        assert service.reading_row(session, uid).status == "in_progress"
    with pytest.raises(ValueError):
        _content(birads_left="7")
    with pytest.raises(ValueError):
        _content(chest_findings=[{"kind": "nodule", "zone": "RU"}])  # not in a mammogram


def test_an_amendment_is_a_new_version_and_the_signed_one_is_kept(runtime: Runtime) -> None:
    uid = _mammo(runtime)
    actor = service.Actor(add_user(runtime, "aliya"), "aliya")
    first = _sign(runtime, uid, actor, _content())
    with runtime.session_factory() as session:
        with pytest.raises(ReportSignedError):
            service.sign(
                session,
                archive=runtime.archive,
                study_instance_uid=uid,
                actor=actor,
                agreement=None,
            )
        with pytest.raises(InvalidReportError, match="reason"):
            service.save_draft(
                session, study_instance_uid=uid, actor=actor, content=_content(), language="kk"
            )
    second = _sign(runtime, uid, actor, _content(birads_left="5"), amendment_reason="second look")
    assert second.version == 2 and second.amends_id == first.id
    with runtime.session_factory() as session:
        versions = [(r.version, r.status) for r in service.reports_of(session, uid)]
        assert versions == [(2, "signed"), (1, "superseded")]
        assert service.content_of(service.reports_of(session, uid)[1]).birads_left == "4"
    assert sorted(_instances(runtime, uid, COMPREHENSIVE_SR)) == sorted(
        [first.sr_sop_instance_uid, second.sr_sop_instance_uid]
    )
    newer = dcmread(io.BytesIO(runtime.archive.read_instance_bytes(second.sr_sop_instance_uid)))
    predecessor = newer.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert (
        predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.sr_sop_instance_uid
    )


@pytest.mark.parametrize(
    ("priority", "right", "left", "expected"),
    [
        ("high", "1", "4", Agreement.AGREE),
        ("high", "1", "2", Agreement.AI_FALSE_ALARM),
        ("low", "1", "5", Agreement.AI_MISSED),
        ("medium", "2", "1", Agreement.AGREE),
        ("not_analysed", "1", "4", None),
    ],
)
def test_agreement_with_the_ai(
    priority: str, right: str, left: str, expected: Agreement | None
) -> None:
    content = _content(birads_right=right, birads_left=left)
    assert service.suggested_agreement(content, priority) == expected


def test_chest_report_needs_a_follow_up_for_a_nodule(runtime: Runtime) -> None:
    ds = chest_study()[0]
    store(runtime, ds)
    uid = str(ds.StudyInstanceUID)
    set_ai_result(runtime, uid, priority="low", score=0.1)
    actor = service.Actor(add_user(runtime, "berik"), "berik")
    nodule = {
        "template": "chest",
        "chest_findings": [{"kind": "nodule", "zone": "RU", "size_mm": 7}],
        "impression": "Nodule",
    }
    with pytest.raises(InvalidReportError, match="follow_up"):
        _sign(runtime, uid, actor, ReportContent.model_validate(nodule))
    report = _sign(
        runtime, uid, actor, ReportContent.model_validate({**nodule, "follow_up": "ct_6_12m"})
    )
    with runtime.session_factory() as session:
        assert service.reading_row(session, uid).agreement == "ai_missed"
    sr = hd.sr.ComprehensiveSR.from_dataset(
        dcmread(io.BytesIO(runtime.archive.read_instance_bytes(report.sr_sop_instance_uid)))
    )
    finding = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121071"
    )
    size = next(c for c in finding.ContentSequence if c.ValueType == "NUM")
    assert float(size.MeasuredValueSequence[0].NumericValue) == 7.0


def test_fleischner_follow_up() -> None:
    assert suggested_follow_up(4) is FollowUp.NONE
    assert suggested_follow_up(4, high_risk=True) is FollowUp.CT_12M
    assert suggested_follow_up(7) is FollowUp.CT_6_12M
    assert suggested_follow_up(12) is FollowUp.PET_BIOPSY
    assert suggested_follow_up(None) is FollowUp.CT_NOW


def test_agreement_per_model_for_monitoring(runtime: Runtime) -> None:
    """Signed reports feed the per-model agreement that the situational center shows."""
    from datetime import date, timedelta

    from fastapi.testclient import TestClient

    from qamqor.web.app import create_app

    from .helpers import PASSWORD

    actor = service.Actor(add_user(runtime, "aliya"), "aliya")
    for priority in ("high", "low", "high"):  # BI-RADS 4 each time: agree, missed, agree
        datasets = mammo_study()
        store(runtime, *datasets)
        uid = str(datasets[0].StudyInstanceUID)
        set_ai_result(runtime, uid, priority=priority, score=0.5, task="mammo", model="mammo-9")
        _sign(runtime, uid, actor, _content())
    add_user(runtime, "head", role="head")
    add_user(runtime, "registrar", role="registrar")
    client = TestClient(create_app(runtime))
    answer = client.get("/reading/api/agreement", auth=("head", PASSWORD))
    assert answer.status_code == 200
    (mammo,) = answer.json()["models"]
    assert (mammo["model"], mammo["task"], mammo["read"]) == ("mammo-9", "mammo", 3)
    assert (mammo["agree"], mammo["ai_missed"], mammo["ai_false_alarm"]) == (2, 1, 0)
    assert mammo["agreement_rate"] == pytest.approx(2 / 3, abs=1e-4)
    today = date.today()
    yesterday = (today - timedelta(days=1)).isoformat()
    earlier = client.get(f"/reading/api/agreement?until={yesterday}", auth=("head", PASSWORD))
    assert earlier.json()["models"] == []
    bad = client.get(
        f"/reading/api/agreement?since={today.isoformat()}&until={yesterday}",
        auth=("head", PASSWORD),
    )
    assert bad.status_code == 422
    assert client.get("/reading/api/agreement", auth=("registrar", PASSWORD)).status_code == 403
    assert client.get("/reading/api/agreement").status_code == 401
