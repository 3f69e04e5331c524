"""What every part's commands share: the ``--data-dir`` option, settings, the console, and
domain errors as exit codes (the CLI's edge mapping).

A part's ``cli`` module has ``register(app)``; its commands that need the database or the
archive open the assembled runtime with ``open_runtime`` (the top layer's ``build_runtime``,
installed by ``qamqor.cli`` so that parts need not import it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from qamqor.core.errors import ErrorKind, QamqorError
from qamqor.core.runtime import Runtime
from qamqor.core.settings import Settings

console = Console(stderr=True, highlight=False, soft_wrap=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $QAMQOR_DATA_DIR or ./qamqor-data)"),
]

#: Exit codes of a command that failed on a domain error (sysexits.h where one fits).
EXIT_CODES: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 2,
    ErrorKind.NOT_FOUND: 2,
    ErrorKind.CONFLICT: 2,
    ErrorKind.FORBIDDEN: 77,  # EX_NOPERM
    ErrorKind.UNAUTHENTICATED: 77,
    ErrorKind.UNAVAILABLE: 75,  # EX_TEMPFAIL: try again later
}

RuntimeBuilder = Callable[..., Runtime]
_builder: list[RuntimeBuilder] = []


def install_runtime_builder(builder: RuntimeBuilder) -> None:
    """Called once by ``qamqor.cli``: how commands build the assembled runtime."""
    _builder[:] = [builder]


def settings_for(data_dir: Path | None = None, **overrides: object) -> Settings:
    """The settings (environment, ``.env``) with the command's options; exit 2 if invalid."""
    values: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return Settings(**values)
    except ValueError as exc:
        console.print(f"[red]Invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


@contextmanager
def domain_errors() -> Iterator[None]:
    """A domain error ends the command with its message and the exit code of its kind."""
    try:
        yield
    except QamqorError as exc:
        console.print(f"[red]Error:[/red] {exc.message}")
        raise typer.Exit(EXIT_CODES[exc.kind]) from None


def build_runtime(settings: Settings, *, recover: bool = False) -> Runtime:
    """The assembled runtime (database migrated, every part's services started)."""
    if not _builder:
        raise RuntimeError("qamqor.cli installs the runtime builder before commands run")
    return _builder[0](settings, recover=recover)


@contextmanager
def open_runtime(settings: Settings, *, recover: bool = False) -> Iterator[Runtime]:
    """``build_runtime``, closed at the end; domain errors inside end the command
    (``domain_errors``)."""
    runtime = build_runtime(settings, recover=recover)
    try:
        with domain_errors():
            yield runtime
    finally:
        runtime.close()
