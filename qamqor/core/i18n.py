"""Translations of text shown to people: Kazakh first, then Russian and English.

Catalogues are gettext ``.po`` files under ``qamqor/locale/<lang>/LC_MESSAGES/messages.po``,
managed with Babel. They are read at run time (no compile step), so a fresh clone works as is.
To add strings after changing templates or code::

    pybabel extract -F qamqor/locale/babel.cfg -o qamqor/locale/messages.pot \
        --project=Qamqor --copyright-holder="Qamqor contributors" --no-wrap qamqor
    pybabel update -i qamqor/locale/messages.pot -d qamqor/locale --no-wrap --no-fuzzy-matching \
        --ignore-obsolete

then translate the new entries in the Kazakh and Russian catalogues (English falls back to the
msgid; ``tests/web/test_i18n.py`` checks). ``pybabel extract`` does not look inside f-strings:
translate first, then format (``label = gettext(lang, N_("Room"))``, then ``f"{label}: ..."``).
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


Argument = str | int | float


class Message:
    """Text for a person, kept as its English msgid and arguments until the language is known.

    Code that decides *what* to say (a study not analysed, and why) runs before anyone asks in
    which language; it builds a ``Message`` and stores it (:meth:`to_json`), and the page that
    shows it translates it (:meth:`translate`). The msgid uses ``%(name)s`` fields like every
    other catalogue entry; mark it with :func:`N_` where it is written so that ``pybabel extract``
    finds it. Arguments are language-neutral (numbers, DICOM codes such as ``CR`` or ``MLO``).
    """

    __slots__ = ("args", "msgid")

    def __init__(self, msgid: str, /, **args: Argument) -> None:
        self.msgid = msgid
        self.args = args

    def english(self) -> str:
        return self._fill(self.msgid)

    def translate(self, language: str) -> str:
        return self._fill(gettext(language, self.msgid))

    def _fill(self, text: str) -> str:
        try:
            return text % self.args if self.args else text
        except (KeyError, TypeError, ValueError):  # a translation that lost a field
            return self.msgid % self.args if self.args else self.msgid

    def to_json(self) -> dict[str, object]:
        return {"msgid": self.msgid, "args": dict(self.args)}

    @classmethod
    def from_json(cls, value: object) -> Message | None:
        """The message stored by :meth:`to_json`, or ``None`` for anything else."""
        if not isinstance(value, dict) or not isinstance(value.get("msgid"), str):
            return None
        args = value.get("args") or {}
        if not isinstance(args, dict):
            return None
        return cls(
            value["msgid"],
            **{str(k): v for k, v in args.items() if isinstance(v, str | int | float)},
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and (self.msgid, self.args) == (other.msgid, other.args)

    def __hash__(self) -> int:
        return hash((self.msgid, tuple(sorted(self.args.items()))))

    def __str__(self) -> str:
        return self.english()

    def __repr__(self) -> str:
        return f"Message({self.msgid!r}, **{self.args!r})"


def messages_to_json(messages: list[Message]) -> list[dict[str, object]]:
    return [m.to_json() for m in messages]


def messages_from_json(value: object) -> list[Message]:
    """Stored messages (a list of :meth:`Message.to_json`); unreadable items are left out."""
    if not isinstance(value, list):
        return []
    return [m for m in (Message.from_json(item) for item in value) if m is not None]


def translate_all(messages: list[Message], language: str, *, separator: str = "; ") -> str:
    return separator.join(m.translate(language) for m in messages)
