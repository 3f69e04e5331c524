"""The list of capabilities, and what each registers: the top layer (``runtime``, ``web/``,
``cli.py``, ``server.py``) loops over it; nothing below it knows which parts there are.

A capability is a package; it registers by having any of these modules or folders:

``models``      its ORM tables (they join ``Base.metadata`` when imported);
``migrations/`` its Alembic revisions (one history over all folders; ``core``'s lie in
                ``core/migrations/versions``);
``startup``     ``start(runtime, *, recover)``: starts its long-lived services and registers
                them with ``runtime.provide`` (the archive);
``router``      ``routers``: its FastAPI routers;
``jobs``        ``attach(runtime, queue, *, sweep)``: registers its jobs and event listeners,
                returns something with ``stop()``;
``cli``         ``register(app)``: adds its commands to the ``qamqor`` Typer app.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

    from qamqor.core.jobs import JobQueue
    from qamqor.core.runtime import Runtime

CAPABILITIES = [
    "qamqor.core",
    "qamqor.pacs",
    "qamqor.ai",
    "qamqor.reading",
    "qamqor.registry",
    "qamqor.scheduling",
    "qamqor.kiosk",
]


def _modules(kind: str, packages: list[str] = CAPABILITIES) -> list[ModuleType]:
    """Each capability's ``kind`` module, in list order (capabilities without one skipped)."""
    found: list[ModuleType] = []
    for name in packages:
        try:
            found.append(importlib.import_module(f"{name}.{kind}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"{name}.{kind}":
                raise
    return found


def import_models() -> None:
    """Import every capability's ORM models so that their tables join ``Base.metadata``."""
    _modules("models")


def migration_dirs() -> list[Path]:
    """The folders of every capability's Alembic revisions."""
    found: list[Path] = []
    for name in CAPABILITIES:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            for candidate in (
                Path(location) / "migrations" / "versions",
                Path(location) / "migrations",
            ):
                if candidate.is_dir() and any(candidate.glob("[0-9]*.py")):
                    found.append(candidate)
                    break
    return found


def start_services(runtime: Runtime, *, recover: bool = True) -> None:
    """Start every capability's long-lived services (``startup.start``)."""
    for module in _modules("startup"):
        module.start(runtime, recover=recover)


def routers() -> list[Any]:
    """The web foundation's routers (home, login, static), then every capability's."""
    modules = _modules("router", ["qamqor.web", *CAPABILITIES])
    return [router for module in modules for router in module.routers]


def attach_jobs(runtime: Runtime, queue: JobQueue, *, sweep: bool = True) -> list[Any]:
    """Every capability's jobs and event listeners; returns what to ``stop()`` at shutdown."""
    # ``qamqor.core.jobs`` is the queue itself, not a capability's jobs: it has no ``attach``.
    attaches = [getattr(module, "attach", None) for module in _modules("jobs")]
    return [attach(runtime, queue, sweep=sweep) for attach in attaches if attach is not None]


def register_commands(app: typer.Typer) -> None:
    """Every capability's command-line commands."""
    for module in _modules("cli"):
        module.register(app)
