"""The list of capabilities: ``web/``, ``cli.py`` and migrations loop over it.

Each capability module may expose ``models`` (ORM tables), ``router`` (FastAPI routers),
and ``cli`` (a Typer app added as a sub-command group).
"""

from __future__ import annotations

import importlib
from typing import Any

CAPABILITIES = [
    "qamqor.core",
    "qamqor.pacs",
    "qamqor.registry",
    "qamqor.scheduling",
    "qamqor.kiosk",
]


def import_models() -> None:
    """Import every capability's ORM models so that their tables join ``Base.metadata``."""
    for name in CAPABILITIES:
        try:
            importlib.import_module(f"{name}.models")
        except ModuleNotFoundError as exc:
            if exc.name != f"{name}.models":
                raise


def routers() -> list[Any]:
    """Every capability's FastAPI routers (its ``router`` module's ``routers`` list)."""
    found: list[Any] = []
    for name in ["qamqor.web", *CAPABILITIES]:
        try:
            module = importlib.import_module(f"{name}.router")
        except ModuleNotFoundError as exc:
            if exc.name != f"{name}.router":
                raise
            continue
        found.extend(module.routers)
    return found
