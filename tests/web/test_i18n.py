"""Pages speak Kazakh (first and by default), Russian and English; catalogues are complete."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import httpx
import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import select

import qamqor
from qamqor.core import i18n
from qamqor.core.auth import create_user
from qamqor.core.models import User
from qamqor.pacs.parsing import parse_part10
from qamqor.runtime import Runtime
from qamqor.web.app import create_app

PASSWORD = "correct horse battery"
PACKAGE = Path(qamqor.__file__).parent
CYRILLIC = re.compile(r"[\u0400-\u04FF]")
PLACEHOLDER = re.compile(r"%\([a-z_]+\)[sd]")


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def choose_language(client: TestClient, language: str, next_path: str = "/login") -> httpx.Response:
    token = csrf_of(client.get(next_path).text)
    response = client.post(
        "/language", data={"lang": language, "next": next_path, "csrf_token": token}
    )
    assert response.status_code == 200
    return response


def login(client: TestClient, username: str) -> None:
    token = csrf_of(client.get("/login").text)
    response = client.post(
        "/login",
        data={"username": username, "password": PASSWORD, "csrf_token": token},
        follow_redirects=False,
    )
    assert response.status_code == 303


def add_user(runtime: Runtime, username: str, role: str, language: str | None = None) -> None:
    with runtime.session_factory() as session:
        user = create_user(session, username=username, password=PASSWORD, role=role)
        if language:
            user.language = language
        session.commit()


def saved_language(runtime: Runtime, username: str) -> str:
    with runtime.session_factory() as session:
        return str(session.scalar(select(User.language).where(User.username == username)))


# The catalogues ------------------------------------------------------------------------------
def extracted_messages() -> dict[str | tuple[str, ...], list[str]]:
    """Every msgid in the templates and code, as ``pybabel extract`` finds it."""
    with (PACKAGE / "locale" / "babel.cfg").open() as handle:
        method_map, options_map = parse_mapping_cfg(handle)
    found: dict[str | tuple[str, ...], list[str]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        str(PACKAGE), method_map, options_map
    ):
        found.setdefault(message, []).append(f"{filename}:{lineno}")
    return found


#: The functions whose string arguments are msgids (pybabel's default keywords, and Message).
TRANSLATING = {"_", "N_", "gettext", "ngettext", "Message"}


def msgids_in_the_code() -> dict[str, list[str]]:
    """Every string literal given to a translating function in the package's Python code,
    read with ``ast``: also where ``pybabel extract`` cannot see it (inside an f-string)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in TRANSLATING:
                continue
            for argument in node.args:
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    found.setdefault(argument.value, []).append(f"{where}:{node.lineno}")
    return found


def test_every_msgid_in_the_code_is_extracted() -> None:
    """A msgid hidden from ``pybabel extract`` is never translated: every screen shows it in
    English (the ticket's "Appointment:" and "Issued:" were inside f-strings)."""
    extracted = {m if isinstance(m, str) else m[0] for m in extracted_messages()}
    extracted |= {m[1] for m in extracted_messages() if isinstance(m, tuple)}
    hidden = {
        msgid: where for msgid, where in msgids_in_the_code().items() if msgid not in extracted
    }
    assert not hidden, "pybabel extract does not see (move them out of f-strings):\n" + "\n".join(
        f"{msgid!r} at {', '.join(where)}" for msgid, where in sorted(hidden.items())
    )


def test_extraction_finds_the_pages_text() -> None:
    messages = extracted_messages()
    assert "Sign in" in messages  # login.html
    assert "Patient name" in messages  # pacs/templates/pacs/studies.html
    assert "Wrong username or password." in messages  # N_() in web/router.py
    assert ("%(num)d series", "%(num)d series") in messages  # ngettext


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_every_message_is_translated(language: str) -> None:
    """Every msgid ``pybabel extract`` finds in the code and templates is translated in Kazakh
    and Russian (English may fall back to the msgid); all of them are listed when not."""
    with i18n.catalog_path(language).open("rb") as handle:
        catalog: Catalog = read_po(handle, locale=language)
    plural_count = catalog.num_plurals
    problems = []
    for message, where in extracted_messages().items():
        msgid = message[0] if isinstance(message, tuple) else message
        entry = catalog.get(msgid)
        if entry is None:
            if language != "en":
                problems.append(f"missing {msgid!r} ({where[0]})")
            continue
        strings = list(entry.string) if isinstance(entry.string, tuple) else [entry.string]
        if entry.fuzzy or not all(strings):
            if language != "en" or entry.fuzzy:
                problems.append(f"untranslated or fuzzy {msgid!r} ({where[0]})")
            continue
        if isinstance(message, tuple) and len(strings) != plural_count:
            problems.append(f"{msgid!r} has {len(strings)} plural forms, not {plural_count}")
        for text in strings:
            if sorted(PLACEHOLDER.findall(text)) != sorted(PLACEHOLDER.findall(msgid)):
                problems.append(f"{msgid!r}: placeholders differ in {text!r}")
            # Not an English copy: Kazakh and Russian are written in Cyrillic.
            english_copy = re.search("[A-Za-z]{3}", msgid) and not CYRILLIC.search(text)
            if language in ("kk", "ru") and english_copy:
                problems.append(f"{msgid!r} is not translated: {text!r}")
    assert not problems, "\n".join(problems)


def test_kazakh_and_russian_translations_differ_where_the_languages_do() -> None:
    kk, ru = i18n.load_catalog("kk"), i18n.load_catalog("ru")
    # Kazakh-only letters appear in the Kazakh catalogue: it is not the Russian one copied.
    kazakh_letters = re.compile("[әғқңөұүһі]", re.IGNORECASE)
    assert kazakh_letters.search(kk.get("Password").string)
    assert not kazakh_letters.search(ru.get("Password").string)
    same = [m.id for m in kk if m.id and m.string == ru.get(m.id).string]
    assert len(same) <= 2, same  # a few words ("Пациент") are spelled alike


def test_russian_plurals_follow_russian_grammar() -> None:
    forms = [
        i18n.ngettext("ru", "%(num)d series", "%(num)d series", n) % {"num": n}
        for n in (1, 2, 5, 21)
    ]
    assert forms == ["1 серия", "2 серии", "5 серий", "21 серия"]
    assert i18n.ngettext("kk", "%(num)d series", "%(num)d series", 3) % {"num": 3} == "3 серия"


def test_the_template_catalogue_is_up_to_date() -> None:
    with (PACKAGE / "locale" / "messages.pot").open("rb") as handle:
        template = read_po(handle)
    ids = {m.id if isinstance(m.id, str) else m.id[0] for m in template if m.id}
    extracted = {m if isinstance(m, str) else m[0] for m in extracted_messages()}
    assert extracted <= ids, f"run pybabel extract: {sorted(extracted - ids)}"


def test_language_codes_are_normalised() -> None:
    assert i18n.normalise_language("ru-RU") == "ru"
    assert i18n.normalise_language("EN_us") == "en"
    assert i18n.normalise_language("de") == "kk"
    assert i18n.normalise_language(None) == "kk"


# The pages -----------------------------------------------------------------------------------
LOGIN_TEXT = {
    "kk": ["Qamqor жүйесіне кіру", "Пайдаланушы аты", "Құпиясөз"],
    "ru": ["Вход в Qamqor", "Имя пользователя", "Пароль"],
    "en": ["Sign in to Qamqor", "Username", "Password"],
}
STUDIES_TEXT = {
    "kk": ["Зерттеулер", "Пациенттің аты-жөні", "Зерттеу күні", "1 серия", "Шығу"],
    "ru": ["Исследования", "ФИО пациента", "Дата исследования", "1 серия", "Выйти"],
    "en": ["Studies", "Patient name", "Study date", "1 series", "Sign out"],
}


def test_login_page_speaks_kazakh_first_then_the_chosen_language(runtime: Runtime) -> None:
    client = TestClient(create_app(runtime))
    page = client.get("/login")
    assert '<html lang="kk">' in page.text
    for text in LOGIN_TEXT["kk"]:
        assert text in page.text
    # The switcher is on the page, Kazakh first.
    names = re.findall(r'name="lang" value="([a-z]{2})"', page.text)
    assert names == ["kk", "ru", "en"]

    for language in ("ru", "en", "kk"):
        page = choose_language(client, language)
        assert f'<html lang="{language}">' in page.text
        for text in LOGIN_TEXT[language]:
            assert text in page.text
        others = [t for lang, texts in LOGIN_TEXT.items() if lang != language for t in texts]
        assert not [t for t in others if t in page.text]
        # The choice is kept for the next request.
        assert f'<html lang="{language}">' in client.get("/login").text


def test_messages_from_code_are_translated(runtime: Runtime) -> None:
    add_user(runtime, "registrar1", "registrar")
    client = TestClient(create_app(runtime))
    choose_language(client, "ru")
    token = csrf_of(client.get("/login").text)
    wrong = client.post(
        "/login", data={"username": "x", "password": "wrong-password", "csrf_token": token}
    )
    assert "Неверное имя пользователя или пароль." in wrong.text
    login(client, "registrar1")
    denied = client.get("/studies")
    assert denied.status_code == 403
    assert "Доступ запрещён" in denied.text


def test_studies_page_in_three_languages_and_the_language_is_saved(runtime: Runtime) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    runtime.archive.store_instance(parse_part10(data), source="test")
    add_user(runtime, "daulet", "radiologist")
    client = TestClient(create_app(runtime))
    login(client, "daulet")
    assert saved_language(runtime, "daulet") == "kk"
    for language in ("kk", "ru", "en"):
        page = choose_language(client, language, "/studies")
        assert f'<html lang="{language}">' in page.text
        for text in STUDIES_TEXT[language]:
            assert text in page.text, (language, text)
        assert saved_language(runtime, "daulet") == language

    # Saved with the user: a new browser opens in the user's language.
    choose_language(client, "ru", "/studies")
    fresh = TestClient(create_app(runtime))
    login(fresh, "daulet")
    assert '<html lang="ru">' in fresh.get("/studies").text


def test_a_language_picked_on_the_login_page_wins_and_is_saved(runtime: Runtime) -> None:
    add_user(runtime, "saule", "technologist", language="ru")
    client = TestClient(create_app(runtime))
    login(client, "saule")
    assert '<html lang="ru">' in client.get("/studies").text  # her saved language

    other = TestClient(create_app(runtime))
    choose_language(other, "en")
    login(other, "saule")
    assert '<html lang="en">' in other.get("/studies").text
    assert saved_language(runtime, "saule") == "en"


def test_unknown_language_is_refused(runtime: Runtime) -> None:
    client = TestClient(create_app(runtime))
    token = csrf_of(client.get("/login").text)
    assert client.post("/language", data={"lang": "de", "csrf_token": token}).status_code == 400
    assert '<html lang="kk">' in client.get("/login").text


def test_a_missing_page_is_a_page_for_browsers_and_json_for_programs(runtime: Runtime) -> None:
    add_user(runtime, "archivist", "admin")
    client = TestClient(create_app(runtime))
    login(client, "archivist")
    choose_language(client, "ru", "/studies")
    page = client.get("/reading/studies/1.2.3.4", headers={"accept": "text/html"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Не найдено" in page.text
    assert client.get("/no/such/page", headers={"accept": "text/html"}).status_code == 404
    # Programs get JSON with the reason, whatever they accept.
    api = client.get("/api/ai/studies/1.2.3.4", headers={"accept": "text/html"})
    assert api.status_code == 404 and "detail" in api.json()
    script = client.get("/reading/studies/1.2.3.4")
    assert script.status_code == 404 and script.json()["detail"]
