"""The list of capabilities: ``web/``, ``cli.py`` and migrations loop over it.

Each capability module may expose ``models`` (ORM tables), ``router`` (FastAPI routers),
``jobs`` (an ``attach(runtime, queue, sweep=...)`` that registers its jobs and listeners and
returns something with ``stop()``), and ``cli`` (a Typer app added as a sub-command group).
"""

from __future__ import annotations

import importlib
from typing import Any

CAPABILITIES = [
    "qamqor.core",
    "qamqor.pacs",
    "qamqor.ai",
    "qamqor.reading",
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


def attach_jobs(runtime: Any, queue: Any, *, sweep: bool = True) -> list[Any]:
    """Every capability's jobs and event listeners; returns what to ``stop()`` at shutdown."""
    attached: list[Any] = []
    for name in CAPABILITIES:
        try:
            module = importlib.import_module(f"{name}.jobs")
        except ModuleNotFoundError as exc:
            if exc.name != f"{name}.jobs":
                raise
            continue
        attach = getattr(module, "attach", None)
        if attach is not None:
            attached.append(attach(runtime, queue, sweep=sweep))
    return attached
