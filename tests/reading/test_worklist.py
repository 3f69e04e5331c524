"""The worklist: order (AI priority, urgency, waiting), filters, search, claims, AI at a glance,
and a constant number of queries per page. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, update

from qamqor.core.db import utcnow
from qamqor.pacs.models import Study
from qamqor.reading import service, worklist
from qamqor.reading.enums import ReadingStatus, Urgency
from qamqor.reading.errors import StudyClaimedError
from qamqor.runtime import Runtime

from .helpers import add_user, analyse, chest_study, mammo_study, set_ai_result, store


def _page(runtime: Runtime, **filters: str) -> list[worklist.WorklistRow]:
    with runtime.session_factory() as session:
        typed = worklist.WorklistFilter(**filters).normalised()
        return worklist.query_worklist(session, typed, now=utcnow()).rows


def _arrived(runtime: Runtime, uid: str, minutes_ago: int) -> None:
    with runtime.session_factory() as session:
        session.execute(
            update(Study)
            .where(Study.study_instance_uid == uid)
            .values(created_at=utcnow() - timedelta(minutes=minutes_ago))
        )
        session.commit()


@pytest.fixture
def five(runtime: Runtime) -> dict[str, str]:
    """Five chest studies: high, medium, low, not analysed, pending; arrival times differ."""
    uids = {}
    for index, name in enumerate(["high", "medium", "low", "not_analysed", "pending"]):
        ds = chest_study(
            patient_id=f"90010130000{index}",
            name=f"PATIENT{index}^{name.upper()}",
            accession=f"ACC{index}",
            institution="Hospital A" if index % 2 else "Hospital B",
            study_date=f"2026010{index + 1}",
        )[0]
        store(runtime, ds)
        uids[name] = str(ds.StudyInstanceUID)
        _arrived(runtime, uids[name], 100 - index)
    set_ai_result(runtime, uids["high"], priority="high", score=0.91)
    set_ai_result(runtime, uids["medium"], priority="medium", score=0.4)
    set_ai_result(runtime, uids["low"], priority="low", score=0.05)
    set_ai_result(
        runtime,
        uids["not_analysed"],
        priority="not_analysed",
        score=None,
        reason="MONOCHROME1 lateral view: not a frontal chest film",
    )
    return uids


def test_order_is_ai_priority_then_urgency_then_waiting_time(
    runtime: Runtime, five: dict[str, str]
) -> None:
    order = [r.study_instance_uid for r in _page(runtime)]
    assert order == [five[k] for k in ["high", "medium", "low", "not_analysed", "pending"]]

    # A second low study that waited longer comes before the first; an urgent one before both.
    extra = chest_study(patient_id="900101300099", accession="ACC99")[0]
    store(runtime, extra)
    uid = str(extra.StudyInstanceUID)
    set_ai_result(runtime, uid, priority="low", score=0.02)
    _arrived(runtime, uid, 1000)
    rows = [r.study_instance_uid for r in _page(runtime)]
    assert rows.index(uid) == rows.index(five["low"]) - 1
    with runtime.session_factory() as session:
        service.set_urgency(session, study_instance_uid=five["low"], urgency=Urgency.EMERGENCY)
        session.commit()
    rows = [r.study_instance_uid for r in _page(runtime)]
    assert rows[:4] == [five["high"], five["medium"], five["low"], uid]


def test_each_row_shows_the_ai_result_or_why_not(runtime: Runtime, five: dict[str, str]) -> None:
    rows = {r.study_instance_uid: r for r in _page(runtime)}
    assert rows[five["high"]].ai_priority == "high" and rows[five["high"]].score_percent == 91
    not_analysed = rows[five["not_analysed"]]
    assert not_analysed.ai_priority == "not_analysed"
    assert "frontal" in not_analysed.ai_reason
    assert rows[five["pending"]].ai_priority == ""


def test_filters_and_search(runtime: Runtime, five: dict[str, str]) -> None:
    def uids(**filters: str) -> set[str]:
        return {r.study_instance_uid for r in _page(runtime, **filters)}

    assert uids(ai="high") == {five["high"]}
    assert uids(ai="not_analysed") == {five["not_analysed"]}
    assert uids(ai="pending") == {five["pending"]}
    assert uids(facility="Hospital A") == {five["medium"], five["not_analysed"]}
    assert uids(date_from="2026-01-02", date_to="2026-01-03") == {five["medium"], five["low"]}
    assert uids(modality="DX") == set(five.values())
    assert uids(modality="MG") == set()
    assert uids(q="900101300003") == {five["not_analysed"]}  # IIN
    assert uids(q="9001013") == set(five.values())  # IIN prefix
    assert uids(q="ACC2") == uids(q="acc2") == {five["low"]}  # accession, any case
    assert uids(q="medium") == {five["medium"]}  # given name, any case
    assert uids(q="patient1") == {five["medium"]}  # family name
    assert uids(q="50%") == set()  # LIKE wildcards are text
    with pytest.raises(ValueError):
        worklist.WorklistFilter(date_from="01.02.2026").normalised()


def test_claims_show_who_reads_and_expire(runtime: Runtime, five: dict[str, str]) -> None:
    aliya = service.Actor(add_user(runtime, "aliya"), "aliya")
    berik = service.Actor(add_user(runtime, "berik"), "berik")
    uid = five["medium"]
    with runtime.session_factory() as session:
        service.claim(session, study_instance_uid=uid, actor=aliya, minutes=20)
        session.commit()
    row = next(r for r in _page(runtime) if r.study_instance_uid == uid)
    assert (row.status, row.claimed_by) == (ReadingStatus.IN_PROGRESS, "aliya")
    assert {r.study_instance_uid for r in _page(runtime, status="in_progress")} == {uid}
    with runtime.session_factory() as session, pytest.raises(StudyClaimedError) as refused:
        service.claim(session, study_instance_uid=uid, actor=berik, minutes=20)
    assert refused.value.username == "aliya"
    # The claim lapses: the study is new again and Berik may claim it.
    with runtime.session_factory() as session:
        row_db = service.reading_row(session, uid)
        row_db.claim_expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
    assert next(r for r in _page(runtime) if r.study_instance_uid == uid).status == "new"
    with runtime.session_factory() as session:
        service.claim(session, study_instance_uid=uid, actor=berik, minutes=20)
        session.commit()
        service.release(session, study_instance_uid=uid, actor=aliya)  # not hers: no change
        session.commit()
    assert next(r for r in _page(runtime) if r.study_instance_uid == uid).claimed_by == "berik"


def test_real_pipeline_results_on_the_worklist(runtime: Runtime) -> None:
    mammo = mammo_study()
    chest = chest_study()
    store(runtime, *mammo, *chest)
    mammo_uid, chest_uid = str(mammo[0].StudyInstanceUID), str(chest[0].StudyInstanceUID)
    analyse(runtime, mammo_uid, chest_uid)
    rows = {r.study_instance_uid: r for r in _page(runtime)}
    assert rows[mammo_uid].ai_priority == "high"
    assert rows[mammo_uid].suspicious_breast == "L"  # the lesion is in the left breast
    assert rows[chest_uid].ai_task == "chest"
    top = rows[chest_uid].top_finding
    assert top is not None and top.lung_zone == "RU"  # spot at x=100, y=80 of 256: image left


def test_a_page_costs_the_same_queries_for_any_number_of_rows(runtime: Runtime) -> None:
    def count_queries(n_studies: int) -> int:
        statements: list[str] = []

        def listen(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
            statements.append(statement)

        event.listen(runtime.engine, "before_cursor_execute", listen)
        try:
            _page(runtime)
        finally:
            event.remove(runtime.engine, "before_cursor_execute", listen)
        return len([s for s in statements if s.lstrip().upper().startswith("SELECT")])

    for index in range(3):
        ds = chest_study(patient_id=f"80000000000{index}")[0]
        store(runtime, ds)
        set_ai_result(runtime, str(ds.StudyInstanceUID), priority="high", score=0.9)
    few = count_queries(3)
    for index in range(3, 12):
        ds = chest_study(patient_id=f"8000000000{index:02d}")[0]
        store(runtime, ds)
        set_ai_result(runtime, str(ds.StudyInstanceUID), priority="low", score=0.1)
    assert count_queries(12) == few <= 2
