"""The kiosk: device activation, IIN + one-time code, booking, cancelling, rescheduling,
check-in with a ticket and its PDF, screenings, idle reset, languages (both databases)."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from qamqor.core.db import utcnow, write_session
from qamqor.core.models import AuditEvent
from qamqor.kiosk import router as kiosk_router
from qamqor.kiosk.models import OneTimeCode
from qamqor.runtime import Runtime
from qamqor.web.app import create_app
from tests.kiosk.kiosk_helpers import add_kiosk, csrf_of, kiosk_client, post, sign_in
from tests.registry.region import Region, build_region, slot_soon


@pytest.fixture
def region(runtime: Runtime) -> Region:
    return build_region(runtime)


def test_only_an_activated_device_opens_the_kiosk(runtime: Runtime, region: Region) -> None:
    client = TestClient(create_app(runtime))
    response = client.get("/kiosk", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/kiosk/activate"
    page = client.get("/kiosk/activate")
    wrong = client.post(
        "/kiosk/activate", data={"token": "qmq_nonsense", "csrf_token": csrf_of(page.text)}
    )
    assert wrong.status_code == 403
    assert "Бұл киоск құрылғысының токені емес." in wrong.text
    token = add_kiosk(runtime, region.polyclinic_id)
    done = client.post(
        "/kiosk/activate",
        data={"token": token, "csrf_token": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert "httponly" in done.headers["set-cookie"].lower()
    start = client.get("/kiosk")
    assert start.status_code == 200 and '<html lang="kk">' in start.text
    # A staff token is not a kiosk token.
    assert client.get("/kiosk/hall/called.json").status_code == 200


def test_bad_iin_and_unknown_resident_in_the_chosen_language(
    runtime: Runtime, region: Region
) -> None:
    client = kiosk_client(runtime, region)
    bad = region.man_iin[:11] + str((int(region.man_iin[11]) + 1) % 10)
    page = post(client, "/kiosk/identify", {"iin": bad})
    assert page.status_code == 422
    assert "ЖСН-нің бақылау цифры қате" in page.text
    post(client, "/kiosk/language", {"lang": "ru", "next": "/kiosk"})
    # An unregistered IIN gets the code screen like any other: the kiosk tells no passer-by
    # who is registered; no code is sent, and whatever is entered is wrong.
    page = post(client, "/kiosk/identify", {"iin": "860904350504"})
    assert page.status_code == 200 and page.url.path == "/kiosk/code"
    assert '<html lang="ru">' in page.text
    assert "не зарегистрирован" not in page.text
    assert "Если этот ИИН зарегистрирован, код отправлен в SMS" in page.text
    with runtime.session_factory() as session:
        assert session.scalar(select(OneTimeCode.id)) is None
    for _ in range(2):
        again = post(client, "/kiosk/verify", {"code": "123456"}, "/kiosk/code")
        assert again.status_code == 422 and "Неверный код." in again.text
    third = post(client, "/kiosk/verify", {"code": "123456"}, "/kiosk/code")
    assert third.url.path == "/kiosk/verify" and "Слишком много неверных" in third.text
    assert client.get("/kiosk/code", follow_redirects=False).status_code == 303


def test_codes_are_hashed_limited_and_expire(runtime: Runtime, region: Region) -> None:
    client = kiosk_client(runtime, region)
    page = post(client, "/kiosk/identify", {"iin": region.man_iin})
    code = re.search(r"data-demo-code>(\d{6})<", page.text).group(1)
    assert "21<" not in page.text  # not even the phone's last digits
    with runtime.session_factory() as session:
        row = session.scalars(select(OneTimeCode)).one()
        assert code not in row.code_hash and len(row.code_hash) == 64
    wrong = str((int(code) + 1) % 1_000_000).zfill(6)
    for _ in range(2):
        again = post(client, "/kiosk/verify", {"code": wrong}, "/kiosk/code")
        assert again.status_code == 422 and "Код қате" in again.text
    third = post(client, "/kiosk/verify", {"code": wrong}, "/kiosk/code")
    assert "Қате код тым көп рет" in third.text
    # Even the right code is refused now.
    assert client.get("/kiosk/code", follow_redirects=False).status_code == 303

    page = post(client, "/kiosk/identify", {"iin": region.man_iin})
    code = re.search(r"data-demo-code>(\d{6})<", page.text).group(1)
    with write_session(runtime.session_factory) as session:
        for row in session.scalars(select(OneTimeCode)):
            row.expires_at = utcnow()
    expired = post(client, "/kiosk/verify", {"code": code}, "/kiosk/code")
    assert "мерзімі өтті" in expired.text
    # Three codes per quarter of an hour; a fourth is not sent, and the screen does not say so
    # (it would tell that the IIN is registered): the code screen, where nothing matches.
    post(client, "/kiosk/identify", {"iin": region.man_iin})
    refused = post(client, "/kiosk/identify", {"iin": region.man_iin})
    assert refused.status_code == 200 and refused.url.path == "/kiosk/code"
    assert "data-demo-code" not in refused.text
    with runtime.session_factory() as session:
        assert len(session.scalars(select(OneTimeCode)).all()) == 3


def test_book_cancel_reschedule_check_in_and_ticket(runtime: Runtime, region: Region) -> None:
    soon = slot_soon(runtime, region)
    client = kiosk_client(runtime, region)
    home = sign_in(client, region.man_iin)
    assert "Сәлеметсіз бе, Бауыржан!" in home
    assert "№1 қалалық емхана" in home
    assert region.man_iin not in home  # the IIN is not shown back

    slots = client.get("/kiosk/book?specialty=therapist")
    first = re.findall(r'data-slot="(\d+)"', slots.text)
    assert first and int(first[0]) == soon  # the earliest first, at his own polyclinic
    booked = post(client, "/kiosk/book", {"slot_id": first[0]}, "/kiosk/book?specialty=therapist")
    assert "Сіз қабылдауға жазылдыңыз." in booked.text
    appointment = re.search(r'data-appointment="(\d+)"', booked.text).group(1)

    # The same time twice for him: refused. Taken by him, for her: a plain message.
    again = post(client, "/kiosk/book", {"slot_id": first[0]}, "/kiosk/book?specialty=therapist")
    assert again.status_code == 409
    assert "Сол уақытта осы мамандыққа жазылуыңыз бар." in again.text
    other = kiosk_client(runtime, region, "kiosk-2")
    sign_in(other, region.woman_iin)
    taken = post(other, "/kiosk/book", {"slot_id": first[0]}, "/kiosk/book?specialty=therapist")
    assert taken.status_code == 409
    assert "Бұл уақыт жаңа ғана брондалды. Басқасын таңдаңыз." in taken.text
    assert f'data-slot="{first[0]}"' not in taken.text  # the list again, without it

    # Move to the next time, then back is not needed: cancel the moved one.
    moved = post(
        client,
        "/kiosk/book",
        {"slot_id": first[1], "replace": appointment},
        f"/kiosk/book?specialty=therapist&replace={appointment}",
    )
    assert "Қабылдау уақыты ауыстырылды." in moved.text
    new_id = re.search(r'data-appointment="(\d+)"', moved.text).group(1)
    assert new_id != appointment
    cancelled = post(client, "/kiosk/cancel", {"appointment_id": new_id}, "/kiosk/home")
    assert "Қабылдау жойылды." in cancelled.text
    assert "Алдағы қабылдауларыңыз жоқ." in cancelled.text

    # Book the soon slot again, check in, get a ticket and its receipt.
    home = post(client, "/kiosk/book", {"slot_id": str(soon)}, "/kiosk/book?specialty=therapist")
    appointment = re.search(r'data-appointment="(\d+)"', home.text).group(1)
    ticket = post(client, "/kiosk/checkin", {"appointment_id": appointment}, "/kiosk/home")
    code = re.search(r"data-ticket-code>([A-Z]-\d{3})<", ticket.text).group(1)
    print_url = re.search(r'href="(/kiosk/ticket/\d+/print)"', ticket.text).group(1)
    printed = client.get(print_url)
    assert printed.status_code == 200 and f"data-ticket-code>{code}<" in printed.text
    assert "frame-ancestors 'self'" in printed.headers["content-security-policy"]
    assert printed.headers["x-frame-options"] == "SAMEORIGIN"
    pdf = client.get(print_url.removesuffix("/print") + "/receipt.pdf")
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    # Another resident's ticket is nobody else's to print.
    other_resident = kiosk_client(runtime, region, "kiosk-3")
    sign_in(other_resident, region.woman_iin)
    assert other_resident.get(print_url).status_code == 404

    # The hall display shows it once staff call it.
    staff = TestClient(create_app(runtime))
    from qamqor.core.auth import create_user

    with runtime.session_factory() as session:
        create_user(session, username="reg", password="registrar-pass", role="registrar")
        session.commit()
    called = staff.post(
        f"/api/queue/{region.polyclinic_id}/call-next",
        json={"room": "101"},
        auth=("reg", "registrar-pass"),
    )
    assert called.json() == {"code": code, "room": "101"}
    shown = client.get("/kiosk/hall/called.json").json()
    assert shown["called"] == [{"code": code, "room": "101"}]
    hall = client.get("/kiosk/hall").text
    assert "Залдағы табло" in hall and 'data-hall="/kiosk/hall/called.json"' in hall

    with runtime.session_factory() as session:
        actions = set(session.scalars(select(AuditEvent.action)))
    assert {
        "kiosk_sign_in",
        "kiosk_book",
        "kiosk_reschedule",
        "kiosk_cancel",
        "kiosk_check_in",
    } <= actions


def test_screening_due_is_shown_and_bookable(runtime: Runtime, region: Region) -> None:
    client = kiosk_client(runtime, region)
    home = sign_in(client, region.woman_iin)
    assert "Сізге өту керек скринингтер" in home
    slots = client.get("/kiosk/book?specialty=mammography")
    first = re.findall(r'data-slot="(\d+)"', slots.text)[0]
    booked = post(client, "/kiosk/book", {"slot_id": first}, "/kiosk/book?specialty=mammography")
    assert "Сіз қабылдауға жазылдыңыз." in booked.text


def test_idle_resets_the_session_and_language(
    runtime: Runtime, region: Region, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = kiosk_client(runtime, region)
    post(client, "/kiosk/language", {"lang": "en", "next": "/kiosk"})
    home = sign_in(client, region.man_iin)
    assert "Hello, Бауыржан!" in home
    assert 'data-idle-seconds="60"' in home
    later = time.time() + runtime.settings.kiosk_idle_seconds + 1
    monkeypatch.setattr(kiosk_router.time, "time", lambda: later)
    page = client.get("/kiosk/home")
    assert page.url.path == "/kiosk"
    assert "Бауыржан" not in page.text
    assert '<html lang="kk">' in page.text  # the next person starts in Kazakh


def test_every_screen_offers_the_three_languages_kazakh_first(
    runtime: Runtime, region: Region
) -> None:
    client = kiosk_client(runtime, region)
    pages = [client.get("/kiosk").text, sign_in(client, region.man_iin)]
    pages.append(client.get("/kiosk/book").text)
    pages.append(client.get("/kiosk/book?specialty=therapist").text)
    for text in pages:
        assert re.findall(r'name="lang" value="([a-z]{2})"', text) == ["kk", "ru", "en"]
