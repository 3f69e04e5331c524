"""One-time codes through a real HTTP SMS gateway (a small server on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from qamqor.core.settings import Settings
from qamqor.kiosk.models import OneTimeCode
from qamqor.runtime import Runtime, build_runtime
from tests.kiosk.kiosk_helpers import kiosk_client, post
from tests.registry.region import build_region

CSRF = re.compile(r'name="csrf_token" value="[^"]+"')


class Gateway:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[str, dict[str, str]]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                gateway.received.append(
                    (self.headers["Authorization"], json.loads(self.rfile.read(length)))
                )
                self.send_response(gateway.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/send"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    served = Gateway()
    yield served
    served.server.shutdown()


@pytest.fixture
def sms_runtime(settings: Settings, gateway: Gateway) -> Iterator[Runtime]:
    configured = settings.model_copy(
        update={"sms_gateway_url": gateway.url, "sms_gateway_token": SecretStr("gw-token")}
    )
    runtime = build_runtime(configured)
    try:
        yield runtime
    finally:
        runtime.close()


def test_code_goes_by_sms_and_not_on_screen(sms_runtime: Runtime, gateway: Gateway) -> None:
    region = build_region(sms_runtime)
    client = kiosk_client(sms_runtime, region)
    post(client, "/kiosk/language", {"lang": "ru", "next": "/kiosk"})
    page = post(client, "/kiosk/identify", {"iin": region.man_iin})
    assert "data-demo-code" not in page.text
    assert "Если этот ИИН зарегистрирован, код отправлен в SMS" in page.text
    assert "21<" not in page.text  # not even the phone's last digits
    [(authorization, message)] = gateway.received
    assert authorization == "Bearer gw-token"
    assert message["to"] == "+77017654321"
    code = re.search(r"ваш код (\d{6})", message["text"]).group(1)
    home = post(client, "/kiosk/verify", {"code": code}, "/kiosk/code")
    assert home.url.path == "/kiosk/home"


def test_a_failing_gateway_gets_a_plain_message_and_no_code(
    sms_runtime: Runtime, gateway: Gateway
) -> None:
    gateway.status = 500
    region = build_region(sms_runtime)
    client = kiosk_client(sms_runtime, region)
    page = post(client, "/kiosk/identify", {"iin": region.man_iin})
    assert page.status_code == 422
    assert "Кодты жіберу мүмкін болмады. Қайталап көріңіз." in page.text
    with sms_runtime.session_factory() as session:
        assert session.scalar(select(OneTimeCode.id)) is None  # nothing half-written


def test_registered_or_not_the_kiosk_answers_alike(sms_runtime: Runtime, gateway: Gateway) -> None:
    """Before the one-time code the kiosk tells no one whether an IIN is registered: an
    unregistered IIN, a registered one and one without a phone get the same screen, and the
    same answers to the codes typed."""
    from qamqor.core.db import write_session
    from qamqor.registry import service as registry
    from qamqor.registry.enums import Sex
    from tests.registry.region import iin_for

    region = build_region(sms_runtime)
    with write_session(sms_runtime.session_factory) as session:
        phoneless = iin_for(date(1982, 5, 17), Sex.MALE, 40)
        registry.register_resident(session, iin=phoneless, family_name="Ким", given_name="Олег")
    unregistered = iin_for(date(1986, 9, 4), Sex.MALE, 3)
    screens, answers = [], []
    for iin in (region.man_iin, unregistered, phoneless):
        client = kiosk_client(sms_runtime, region, f"kiosk-{iin}")
        page = post(client, "/kiosk/identify", {"iin": iin})
        assert page.status_code == 200 and page.url.path == "/kiosk/code"
        screens.append(CSRF.sub("", page.text))
        entered = [post(client, "/kiosk/verify", {"code": "000000"}, "/kiosk/code")]
        entered += [post(client, "/kiosk/verify", {"code": "000001"}, "/kiosk/code")]
        entered += [post(client, "/kiosk/verify", {"code": "000002"}, "/kiosk/code")]
        answers.append([(r.status_code, r.url.path, CSRF.sub("", r.text)) for r in entered])
    assert screens[0] == screens[1] == screens[2]
    assert answers[0] == answers[1] == answers[2]
    assert [message["to"] for _, message in gateway.received] == ["+77017654321"]
