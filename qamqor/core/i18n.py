"""Translations of text shown to people: Kazakh first, then Russian and English.

Catalogues are gettext ``.po`` files under ``qamqor/locale/<lang>/LC_MESSAGES/messages.po``,
managed with Babel. They are read at run time (no compile step), so a fresh clone works as is.
To add strings after changing templates or code::

    pybabel extract -F qamqor/locale/babel.cfg -o qamqor/locale/messages.pot \
        --project=Qamqor --copyright-holder="Qamqor contributors" --no-wrap qamqor
    pybabel update -i qamqor/locale/messages.pot -d qamqor/locale --no-wrap

then translate the new entries in every catalogue (``tests/web/test_i18n.py`` checks).
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Final

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

#: Supported languages, in the order they are offered (Kazakh first).
LANGUAGES: Final[tuple[str, ...]] = ("kk", "ru", "en")
DEFAULT_LANGUAGE: Final = "kk"
#: Each language's name in itself, for the language switcher.
LANGUAGE_NAMES: Final[dict[str, str]] = {"kk": "Қазақша", "ru": "Русский", "en": "English"}

LOCALE_DIR: Final = Path(__file__).resolve().parent.parent / "locale"
DOMAIN: Final = "messages"


def normalise_language(value: str | None) -> str:
    """A supported language code for ``value`` (``"ru-RU"`` -> ``"ru"``), else the default."""
    if value:
        code = value.strip().lower().replace("_", "-").split("-", 1)[0]
        if code in LANGUAGES:
            return code
    return DEFAULT_LANGUAGE


def catalog_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


@lru_cache(maxsize=len(LANGUAGES))
def load_catalog(language: str) -> Catalog:
    """The parsed ``.po`` catalogue of ``language``."""
    with catalog_path(language).open("rb") as handle:
        return read_po(handle, locale=language, domain=DOMAIN)


@lru_cache(maxsize=len(LANGUAGES))
def translations(language: str) -> Translations:
    """gettext translations for ``language`` (fuzzy entries are left out, as msgfmt does)."""
    buffer = io.BytesIO()
    write_mo(buffer, load_catalog(normalise_language(language)))
    buffer.seek(0)
    return Translations(fp=buffer, domain=DOMAIN)


def gettext(language: str, message: str) -> str:
    return translations(language).gettext(message)


def ngettext(language: str, singular: str, plural: str, n: int) -> str:
    return translations(language).ngettext(singular, plural, n)


def N_(message: str) -> str:
    """Mark ``message`` for extraction; it is translated later, where the language is known."""
    return message
