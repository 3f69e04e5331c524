"""Whole numbers from text, strictly: ASCII digits, within what the database holds.

``int()`` takes more than a client means: ``int("٣")`` is 3 (an Arabic-Indic digit),
``"²".isdigit()`` is true but ``int("²")`` fails, ``int(" 3")`` and ``int("3_0")`` pass, and a
number past the database's integer reaches the driver and fails there. Every number Qamqor
reads from a URL, a query or a form goes through :func:`whole_number` (or the pydantic types of
``qamqor.http.params``).
"""

from __future__ import annotations

import re
from typing import Final

#: The largest value of an ``INTEGER`` column on PostgreSQL (every id of Qamqor is one).
DB_INT_MAX: Final = 2**31 - 1
DB_INT_MIN: Final = -(2**31)
#: More digits than any value in bounds: refused before ``int()`` does any work.
MAX_DIGITS: Final = 20
NUMBER: Final = re.compile(r"-?[0-9]+", re.ASCII)


def whole_number(text: str, *, name: str, minimum: int = 0, maximum: int = DB_INT_MAX) -> int:
    """``text`` as an int from ``minimum`` to ``maximum``; ``ValueError`` says what is wrong."""
    if not NUMBER.fullmatch(text):
        raise ValueError(f"{name} is a whole number written with the digits 0-9, not {text!r}")
    if len(text.removeprefix("-")) > MAX_DIGITS:
        raise ValueError(f"{name} must be from {minimum} to {maximum}; {text[:24]}... is not")
    value = int(text)
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be from {minimum} to {maximum}, not {value}")
    return value


def parse_id(text: str) -> int | None:
    """``text`` as a database id, or None when no row can have it (not ASCII digits, 0, or
    past ``DB_INT_MAX``)."""
    try:
        return whole_number(text, name="an id", minimum=1)
    except ValueError:
        return None
