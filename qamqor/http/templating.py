"""Server-rendered pages: one Jinja2 environment per language, with gettext installed.

Every capability may keep its templates in ``<package>/templates/<capability>/``; they extend
``base.html`` from ``qamqor/http/templates``. Text in templates goes through ``_()`` /
``ngettext()`` and the catalogues in ``qamqor/locale`` (see ``qamqor.core.i18n``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from qamqor import __version__
from qamqor.core.i18n import (
    DEFAULT_LANGUAGE,
    LANGUAGE_NAMES,
    LANGUAGES,
    Message,
    messages_from_json,
    normalise_language,
    translate_all,
    translations,
)
from qamqor.http import navigation
from qamqor.http.csrf import CSRF_FIELD, csrf_token

LANGUAGE_SESSION_KEY: Final = "lang"
STATIC_DIR: Final = Path(__file__).resolve().parent / "static"

#: Sent with every page: no external resources, no framing, nothing cached (patient data).
PAGE_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def template_dirs() -> list[Path]:
    """``qamqor/http/templates`` (the layout) first, then every package's ``templates`` folder
    (``qamqor/<part>/templates``, ``qamqor/web/templates``), found on disk: this layer names
    no part."""
    own = Path(__file__).resolve().parent / "templates"
    root = own.parent.parent
    return [own, *sorted(p for p in root.glob("*/templates") if p.is_dir() and p != own)]


# Filters: DICOM values as people read them ---------------------------------------------------
def dicom_date(value: object) -> str:
    """``20040119`` -> ``2004-01-19`` (ISO 8601 reads the same in kk, ru and en)."""
    text = str(value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text


def dicom_time(value: object) -> str:
    """``072730.123`` -> ``07:27``."""
    text = str(value or "").strip().replace(":", "")
    if len(text) >= 4 and text[:4].isdigit():
        return f"{text[:2]}:{text[2:4]}"
    return text


def person_name(value: object) -> str:
    """``FAMILY^GIVEN^MIDDLE`` -> ``FAMILY GIVEN MIDDLE`` (the first, alphabetic group only)."""
    text = str(value or "").split("=", 1)[0]
    return " ".join(part.strip() for part in text.split("^") if part.strip())


@lru_cache(maxsize=32)
def static_url(name: str) -> str:
    """The URL of a file in ``qamqor/http/static``, with a content hash for caching."""
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return f"/static/{name}?v={digest}"


def translated(language: str, value: object, fallback: str = "") -> str:
    """Text decided by code, in the page's language: a :class:`Message`, a list of them or of
    their stored JSON (``reason_messages`` columns); plain text passes unchanged. Empty:
    ``fallback`` (rows written before the messages were stored)."""
    if isinstance(value, str):
        return value or fallback
    if isinstance(value, Message):
        return value.translate(language)
    if isinstance(value, list | tuple):
        items = [v for v in value if isinstance(v, Message)] or messages_from_json(list(value))
        return translate_all(items, language) or fallback
    return fallback


@lru_cache(maxsize=len(LANGUAGES))
def environment(language: str) -> Environment:
    """The Jinja2 environment whose ``_`` / ``gettext`` / ``ngettext`` speak ``language``."""
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(path) for path in template_dirs()]),
        autoescape=select_autoescape(("html", "xml"), default_for_string=True),
        extensions=["jinja2.ext.i18n"],
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    env.filters.update(
        dicom_date=dicom_date,
        dicom_time=dicom_time,
        person_name=person_name,
        translated=partial(translated, language),
    )
    env.globals.update(
        LANGUAGES=LANGUAGES,
        LANGUAGE_NAMES=LANGUAGE_NAMES,
        CSRF_FIELD=CSRF_FIELD,
        static_url=static_url,
        version=__version__,
    )
    return env


def request_language(request: Request) -> str:
    """The language chosen in this session (Kazakh until one is chosen)."""
    if "session" not in request.scope:
        return DEFAULT_LANGUAGE
    return normalise_language(request.session.get(LANGUAGE_SESSION_KEY))


def current_path(request: Request) -> str:
    """This request's path and query, for ``next`` after a language switch or a login."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> HTMLResponse:
    """Render ``template`` in the request's language with the page's security headers."""
    language = request_language(request)
    principal = getattr(request.state, "principal", None)
    values: dict[str, Any] = {
        "request": request,
        "lang": language,
        "user": principal,
        # The top bar: only the pages this role may open (read from the routes' guards).
        "nav": navigation.pages_for(request.app, principal.role) if principal else [],
        "csrf_token": csrf_token(request),
        "current_path": current_path(request),
    }
    values.update(context or {})
    html = environment(language).get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)
