"""Strict numbers in URLs, queries and forms, as pydantic types for route parameters.

pydantic's lax mode reads ``" 3"``, ``"+3"``, ``"3_0"`` and ``"3.0"`` as 3, and takes any
size: a number past the database's integer reaches the driver and fails there (a 500). These
types take ASCII digits (and a minus, for a clearer message) within bounds the database can
hold; anything else is a 422 that says what is expected (an OperationOutcome under ``/fhir``).
Plain text goes through ``qamqor.core.numbers.whole_number``.

Use in a route::

    @router.get("/things/{thing_id}")
    def thing(thing_id: DbId, offset: Offset = 0): ...

    limit: Annotated[int, Query(ge=1, le=500), StrictInt] = 50  # the validator last
"""

from __future__ import annotations

from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import BeforeValidator

from qamqor.core.numbers import DB_INT_MAX, MAX_DIGITS, NUMBER, parse_id, whole_number

__all__ = ["DB_INT_MAX", "DbId", "Offset", "StrictInt", "parse_id", "whole_number"]


def _ascii_whole_number(value: Any) -> Any:
    """Before pydantic's int parsing: text must be ASCII digits (the bounds come after)."""
    if isinstance(value, str):
        if not NUMBER.fullmatch(value):
            raise ValueError("a whole number written with the digits 0-9")
        if len(value.removeprefix("-")) > MAX_DIGITS:
            raise ValueError(f"at most {MAX_DIGITS} digits")
        return int(value)
    return value


#: The strict parsing alone; put it after the bounds (``Query(ge=...)``): pydantic documents
#: the bounds as ``minimum``/``maximum`` only when they come first.
StrictInt = BeforeValidator(_ascii_whole_number)
#: A row's id in a path, query or form field: 1 to ``DB_INT_MAX``.
DbId = Annotated[int, Ge(1), Le(DB_INT_MAX), StrictInt]
#: How many rows to skip: 0 to ``DB_INT_MAX``.
Offset = Annotated[int, Ge(0), Le(DB_INT_MAX), StrictInt]
