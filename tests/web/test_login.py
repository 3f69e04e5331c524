"""Signing in and out of the pages: sessions, CSRF, next-redirects, idle timeout, roles."""

from __future__ import annotations

import base64
import re
import time
from time import monotonic
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from qamqor.core.auth import create_user
from qamqor.core.errors import QamqorError
from qamqor.core.models import AuditEvent, User
from qamqor.http import deps
from qamqor.runtime import Runtime
from qamqor.web.app import create_app

PASSWORD = "correct horse battery"


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def add_user(runtime: Runtime, username: str, role: str) -> None:
    with runtime.session_factory() as session:
        create_user(session, username=username, password=PASSWORD, role=role)
        session.commit()


def login(
    client: TestClient, username: str, password: str = PASSWORD, next_path: str = ""
) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": username, "password": password, "next": next_path, "csrf_token": token},
        follow_redirects=False,
    )


def audit_rows(runtime: Runtime) -> list[AuditEvent]:
    with runtime.session_factory() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def signed_in(client: TestClient) -> bool:
    response = client.get("/studies", follow_redirects=False)
    if response.status_code == 303:
        assert response.headers["location"].startswith("/login")
        return False
    assert response.status_code == 200
    return True


@pytest.fixture
def client(runtime: Runtime) -> TestClient:
    add_user(runtime, "aigerim", "radiologist")
    return TestClient(create_app(runtime))


def test_pages_redirect_to_login_and_come_back_after_it(
    runtime: Runtime, client: TestClient
) -> None:
    response = client.get("/studies?name=abc&page=2", follow_redirects=False)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/login"
    assert parse_qs(location.query)["next"] == ["/studies?name=abc&page=2"]

    form = client.get(response.headers["location"])
    assert form.status_code == 200
    assert 'name="next" value="/studies?name=abc&amp;page=2"' in form.text
    response = client.post(
        "/login",
        data={
            "username": "aigerim",
            "password": PASSWORD,
            "next": "/studies?name=abc&page=2",
            "csrf_token": csrf_of(form.text),
        },
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/studies?name=abc&page=2"
    page = client.get("/studies")
    assert page.status_code == 200
    assert "aigerim" in page.text  # who is signed in is shown
    # Signed in: the login page sends you on, and / goes to the studies.
    assert client.get("/login", follow_redirects=False).headers["location"] == "/studies"
    assert client.get("/", follow_redirects=False).headers["location"] == "/studies"

    logins = [row for row in audit_rows(runtime) if row.action == "login"]
    assert [(row.actor, row.object_type) for row in logins] == [("aigerim", "user")]
    assert logins[0].source.startswith("web:")


def test_anonymous_home_goes_to_login_and_apis_answer_401(client: TestClient) -> None:
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    # A page asked with bad API credentials is an API call: 401, not a redirect.
    bad = base64.b64encode(b"aigerim:wrong-password").decode()
    response = client.get(
        "/studies", headers={"Authorization": f"Basic {bad}"}, follow_redirects=False
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic")


def test_wrong_credentials_show_an_error_and_are_audited_without_passwords(
    runtime: Runtime, client: TestClient
) -> None:
    client.post("/language", data={"lang": "en", "csrf_token": csrf_of(client.get("/login").text)})
    for username, password in [("aigerim", "wrong-password-1"), ("nobody", "wrong-password-2")]:
        response = login(client, username, password)
        assert response.status_code == 200
        assert "Wrong username or password." in response.text
        assert 'role="alert"' in response.text
        assert f'value="{username}"' in response.text  # the username is kept, not the password
        assert password not in response.text
        assert not signed_in(client)

    failures = [row for row in audit_rows(runtime) if row.action == "login_failed"]
    assert [row.actor for row in failures] == ["aigerim", "nobody"]
    for row in audit_rows(runtime):
        flat = " ".join(str(value) for value in vars(row).values())
        assert "wrong-password" not in flat and PASSWORD not in flat


@pytest.mark.parametrize(
    "unsafe",
    [
        "https://evil.example/",
        "//evil.example/path",
        "/\\evil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
        "http:/evil.example",
        " //evil.example",
        "studies",
    ],
)
def test_next_only_redirects_to_local_paths(client: TestClient, unsafe: str) -> None:
    form = client.get("/login", params={"next": unsafe})
    assert 'name="next" value="/studies"' in form.text
    response = login(client, "aigerim", next_path=unsafe)
    assert response.status_code == 303
    assert response.headers["location"] == "/studies"


def test_state_changing_forms_need_the_sessions_csrf_token(
    runtime: Runtime, client: TestClient
) -> None:
    page = client.get("/login")
    before_login = csrf_of(page.text)
    form = {"username": "aigerim", "password": PASSWORD}

    # No token, a wrong token, or another session's token: refused, not signed in.
    assert client.post("/login", data=form).status_code == 403
    assert client.post("/login", data={**form, "csrf_token": "forged"}).status_code == 403
    other = TestClient(create_app(runtime))
    other_token = csrf_of(other.get("/login").text)
    refused = client.post("/login", data={**form, "csrf_token": other_token})
    assert refused.status_code == 403
    assert "csrf_token" in refused.text  # a fresh form is offered
    assert not signed_in(client)

    response = login(client, "aigerim")
    assert response.status_code == 303
    # Login starts a new session: the token seen before it no longer works.
    stale = client.post("/language", data={"lang": "ru", "csrf_token": before_login})
    assert stale.status_code == 403
    assert client.post("/language", data={"lang": "ru"}).status_code == 403
    # A browser is told so on a page with the way back; a script gets JSON.
    browser = client.post(
        "/language",
        data={"lang": "ru"},
        headers={"Accept": "text/html", "Referer": "http://testserver/studies?page=2"},
    )
    assert browser.status_code == 403
    assert "Форманың мерзімі өтіп кетті" in browser.text  # "The form has expired"
    assert 'href="/studies?page=2"' in browser.text
    script = client.post("/language", data={"lang": "ru"}, headers={"Accept": "*/*"})
    assert script.status_code == 403
    assert "token" in script.json()["detail"]
    assert client.post("/logout", data={"csrf_token": before_login}).status_code == 403
    assert signed_in(client)
    token = csrf_of(client.get("/studies").text)
    assert token != before_login
    # The header works as well as the form field (for scripts in pages).
    switched = client.post(
        "/language",
        data={"lang": "ru", "next": "/studies"},
        headers={"X-CSRF-Token": token},
        follow_redirects=False,
    )
    assert switched.status_code == 303


def test_api_calls_with_credentials_and_no_cookie_need_no_csrf_token(
    runtime: Runtime, client: TestClient
) -> None:
    basic = "Basic " + base64.b64encode(f"aigerim:{PASSWORD}".encode()).decode()
    api = TestClient(create_app(runtime))
    response = api.post(
        "/language",
        data={"lang": "ru", "next": "/studies"},
        headers={"Authorization": basic},
        follow_redirects=False,
    )
    assert response.status_code == 303
    with runtime.session_factory() as session:
        assert session.scalar(select(User.language).where(User.username == "aigerim")) == "ru"

    # A browser form from another site replaying cached Basic credentials is not exempt.
    forged = TestClient(create_app(runtime)).post(
        "/language",
        data={"lang": "en"},
        headers={"Authorization": basic, "Sec-Fetch-Site": "cross-site"},
    )
    assert forged.status_code == 403
    # Nor is a request that carries the session cookie.
    login(client, "aigerim")
    with_cookie = client.post("/language", data={"lang": "en"}, headers={"Authorization": basic})
    assert with_cookie.status_code == 403


def test_logout_ends_the_session(runtime: Runtime, client: TestClient) -> None:
    login(client, "aigerim")
    assert signed_in(client)
    copied = dict(client.cookies)  # e.g. stolen from a shared workstation
    token = csrf_of(client.get("/studies").text)
    response = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert "Сіз жүйеден шықтыңыз." in client.get("/login").text  # "You have signed out."
    assert not signed_in(client)
    assert [row.action for row in audit_rows(runtime)][-1:] == ["logout"]
    # The cookie is dead on the server too: a copy taken before signing out is refused.
    replay = TestClient(client.app)
    replay.cookies.update(copied)
    assert not signed_in(replay)
    # A stale logout (already signed out) just goes to the login page.
    stale = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert stale.headers["location"] == "/login"


class FakeClock:
    """Stands in for the ``time`` module inside ``qamqor.http.deps`` only."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    monotonic = staticmethod(monotonic)


def test_idle_session_times_out(
    runtime: Runtime, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(deps, "time", clock)
    timeout = runtime.settings.session_timeout_minutes * 60
    login(client, "aigerim")
    assert signed_in(client)
    # Activity keeps the session alive: two idle spells just under the limit are fine.
    clock.now += timeout - 60
    assert signed_in(client)
    clock.now += timeout - 60
    assert signed_in(client)
    # One spell over it ends the session.
    clock.now += timeout + 1
    response = client.get("/studies", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/studies"
    clock.now += 1
    assert not signed_in(client)  # the old session is gone, not only refused once


@pytest.mark.parametrize(
    ("role", "allowed"),
    [("registrar", False), ("operator", False), ("technologist", True), ("admin", True)],
)
def test_studies_page_needs_an_imaging_role(
    runtime: Runtime, client: TestClient, role: str, allowed: bool
) -> None:
    add_user(runtime, f"user-{role}", role)
    login(client, f"user-{role}")
    response = client.get("/studies")
    if allowed:
        assert response.status_code == 200
    else:
        assert response.status_code == 403
        assert "Кіруге рұқсат жоқ" in response.text  # "Access denied" in Kazakh
        assert "<table" not in response.text


def test_pages_have_no_external_resources_and_safe_headers(client: TestClient) -> None:
    login(client, "aigerim")
    for path in ["/studies", "/login"]:
        if path == "/login":
            client.cookies.clear()
        response = client.get(path)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert not re.search(r'(src|href|action)="(https?:)?//', response.text)
        stylesheet = re.search(r'href="(/static/[^"]+\.css[^"]*)"', response.text)
        assert stylesheet
        css = client.get(stylesheet.group(1))
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        assert "url(" not in css.text and "@import" not in css.text
    assert client.get("/static/..%2Fapp.py").status_code == 404
    assert client.get("/static/missing.css").status_code == 404


def test_guessing_passwords_locks_the_username_for_a_while(
    runtime: Runtime, client: TestClient
) -> None:
    """After 5 wrong passwords within 15 minutes even the right one is refused (pages and HTTP
    Basic alike), until the oldest failure is 15 minutes old; a success starts the count anew."""
    from datetime import timedelta

    add_user(runtime, "aliya", "radiologist")
    for _ in range(4):
        assert login(client, "aliya", "guess").status_code == 200
    assert login(client, "aliya").status_code == 303  # 4 failures: still allowed
    client.cookies.clear()
    for _ in range(4):
        assert login(client, "aliya", "guess").status_code == 200
    basic = "Basic " + base64.b64encode(b"aliya:guess-by-script").decode()
    assert client.get("/api/ai/studies", headers={"Authorization": basic}).status_code == 401
    # 5 failures since the last success: locked, whatever the password and the channel.
    blocked = login(client, "aliya")
    assert blocked.status_code == 429
    assert "Too many failed sign-ins" in blocked.text or "тым көп" in blocked.text
    assert 0 < int(blocked.headers["Retry-After"]) <= 15 * 60 + 1
    good = "Basic " + base64.b64encode(f"aliya:{PASSWORD}".encode()).decode()
    api = client.get("/api/ai/studies", headers={"Authorization": good})
    assert api.status_code == 429 and "Retry-After" in api.headers
    assert not signed_in(client)
    # Other usernames are not affected.
    add_user(runtime, "berik", "radiologist")
    assert login(client, "berik").status_code == 303
    client.cookies.clear()
    actions = [r.action for r in audit_rows(runtime) if r.actor == "aliya"]
    assert actions.count("login_failed") == 9 and "login_blocked" in actions
    # 15 minutes later the lock is gone.
    with runtime.session_factory() as session:
        for row in session.scalars(
            select(AuditEvent).where(
                AuditEvent.actor == "aliya", AuditEvent.action == "login_failed"
            )
        ):
            row.at = row.at - timedelta(minutes=16)
        session.commit()
    assert login(client, "aliya").status_code == 303


@pytest.mark.parametrize("typed", ["aigerim ", " aigerim", "aigerim\t", "Aigerim"])
def test_a_username_signs_in_only_as_written(
    runtime: Runtime, client: TestClient, typed: str
) -> None:
    """'aigerim ' is not aigerim: the login page and HTTP Basic match the name exactly."""
    response = login(client, typed)
    assert response.status_code == 200
    assert "Пайдаланушы аты немесе құпиясөз қате." in response.text  # "Wrong username or..."
    assert not signed_in(client)
    basic = "Basic " + base64.b64encode(f"{typed}:{PASSWORD}".encode()).decode()
    api = TestClient(create_app(runtime))
    assert api.get("/api/ai/studies", headers={"Authorization": basic}).status_code == 401
    # The name as it is stored still works both ways.
    assert login(client, "aigerim").status_code == 303
    exact = "Basic " + base64.b64encode(f"aigerim:{PASSWORD}".encode()).decode()
    assert api.get("/api/ai/studies", headers={"Authorization": exact}).status_code == 200


def test_spaces_around_a_new_username_are_dropped(runtime: Runtime) -> None:
    with runtime.session_factory() as session:
        user = create_user(session, username="  dana ", password=PASSWORD, role="radiologist")
        session.commit()
        assert user.username == "dana"
        with pytest.raises(QamqorError, match="control characters"):
            create_user(session, username="eve\nadmin", password=PASSWORD, role="radiologist")
