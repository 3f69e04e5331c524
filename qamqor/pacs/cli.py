"""The archive's commands: ``qamqor import``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qamqor.core.commands import DataDirOption, console, open_runtime, settings_for


def import_files(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (searched recursively)")],
    data_dir: DataDirOption = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the summary and every rejection to this file"),
    ] = None,
) -> None:
    """Import DICOM files into the archive, with a progress bar and a summary.

    Every file is stored, found already present, or rejected with its reason; the exit code
    is 1 when any file was rejected.
    """
    from qamqor.pacs.importer import import_paths
    from qamqor.pacs.service import ArchiveService

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        console.print(f"[red]No such file or folder:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    with open_runtime(settings_for(data_dir), recover=True) as runtime:
        summary = import_paths(
            runtime.get(ArchiveService), [str(p) for p in paths], console=console, report=report
        )
    raise typer.Exit(1 if summary.rejected else 0)


def register(app: typer.Typer) -> None:
    app.command("import")(import_files)
