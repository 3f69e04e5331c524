"""The AI commands: ``qamqor analyze`` and ``qamqor models list | install | activate``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qamqor.ai.bundle import Task
from qamqor.ai.errors import AIError

console = Console(stderr=True, highlight=False, soft_wrap=True)
models_app = typer.Typer(
    help="AI model bundles: list, install from a file, activate.", no_args_is_help=True
)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $QAMQOR_DATA_DIR or ./qamqor-data)"),
]


def _models_dir(data_dir: Path | None) -> Path:
    from qamqor.core.settings import Settings

    try:
        settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
    except ValueError as exc:
        console.print(f"[red]Invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None
    return settings.data_dir / "models"


def analyze(
    paths: Annotated[list[Path], typer.Argument(help="DICOM or PNG files")],
    task: Annotated[
        Task | None,
        typer.Option("--task", help="Use this analyser whatever the header says"),
    ] = None,
    model: Annotated[
        list[Path] | None,
        typer.Option("--model", help="A bundle file to use instead of the installed ones"),
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, max=64)] = 2,
    data_dir: DataDirOption = None,
) -> None:
    """Analyse image files; print one JSON object per image (x, y in the file's pixels)."""
    from qamqor.ai.analysis import analyse_image_file
    from qamqor.ai.registry import FixedModels, ModelStore

    try:
        models: ModelStore = (
            FixedModels(list(model), threads=threads)
            if model
            else ModelStore(_models_dir(data_dir), threads=threads)
        )
    except AIError as exc:
        console.print(f"[red]Error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    failed = 0
    for path in paths:
        if not path.is_file():
            console.print(f"{path}: no such file")
            failed += 1
            continue
        try:
            outcome = analyse_image_file(path, models, task=task)
        except AIError as exc:
            console.print(f"{path}: {exc.message}")
            failed += 1
            continue
        if outcome.result is None:
            console.print(f"{path}: not analysed: {outcome.reason}")
            failed += 1
            continue
        line: dict[str, object] = {
            "path": os.fspath(path),
            "task": outcome.task.value if outcome.task else None,
        }
        line.update(outcome.result.as_dict())
        typer.echo(json.dumps(line, ensure_ascii=False))
    raise typer.Exit(1 if failed else 0)


def reanalyse(
    study_uids: Annotated[
        list[str] | None, typer.Argument(help="Study Instance UIDs", show_default=False)
    ] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Every study whose analysis failed")
    ] = False,
    not_analysed: Annotated[
        bool,
        typer.Option("--not-analysed", help="Every study marked 'not analysed' (after a fix)"),
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Queue studies for AI analysis again, e.g. after a new model was activated.

    The jobs go to the queue that 'qamqor serve' or 'qamqor worker' runs; the studies show
    "analysis pending" on the worklist until they are done.
    """
    from sqlalchemy import or_, select

    from qamqor.ai.enums import JobStatus, Priority
    from qamqor.ai.jobs import attach
    from qamqor.ai.models import AIStudy
    from qamqor.core.commands import build_runtime
    from qamqor.core.jobs import JobQueue, make_huey
    from qamqor.core.settings import Settings

    uids = list(dict.fromkeys(study_uids or []))
    if not (uids or failed or not_analysed):
        console.print("Name studies, or use --failed / --not-analysed.")
        raise typer.Exit(2)
    try:
        settings = Settings(data_dir=data_dir) if data_dir is not None else Settings()
    except ValueError as exc:
        console.print(f"[red]Invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None
    runtime = build_runtime(settings, recover=False)
    try:
        queue = JobQueue(huey=make_huey(settings), session_factory=runtime.session_factory)
        pipeline = attach(runtime, queue, sweep=False)
        conditions = []
        if failed:
            conditions.append(AIStudy.status == JobStatus.FAILED)
        if not_analysed:
            conditions.append(AIStudy.priority == Priority.NOT_ANALYSED.value)
        if conditions:
            with runtime.session_factory() as session:
                chosen = session.scalars(
                    select(AIStudy.study_instance_uid).where(or_(*conditions))
                ).all()
            uids.extend(uid for uid in chosen if uid not in uids)
        unknown = [uid for uid in uids if not pipeline.reanalyse(uid)]
    finally:
        runtime.close()
    for uid in unknown:
        console.print(f"{uid}: no such study in the archive")
    console.print(f"Queued for analysis again: {len(uids) - len(unknown)}")
    raise typer.Exit(1 if unknown else 0)


@models_app.command("list")
def models_list(data_dir: DataDirOption = None) -> None:
    """The installed bundles; '*' marks the one each task uses."""
    from qamqor.ai.registry import ModelStore

    store = ModelStore(_models_dir(data_dir))
    found = store.installed()
    if not found:
        console.print("No models installed ('qamqor models install FILE').")
        return
    for item in found:
        mark = "*" if item.active else " "
        validation = item.manifest.validation
        figures = ", ".join(
            f"{key} {validation[key]}" for key in ("auc", "localized_auc") if key in validation
        )
        typer.echo(
            f"{mark} {item.manifest.model_id:32} {item.manifest.task.value:6} {figures}".rstrip()
        )


@models_app.command("install")
def models_install(
    file: Annotated[Path, typer.Argument(help="A .qmodel bundle file")],
    activate: Annotated[bool, typer.Option("--activate", help="Also make it active")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Verify a bundle file and install it (nothing is downloaded)."""
    from qamqor.ai.registry import ModelStore

    store = ModelStore(_models_dir(data_dir))
    try:
        manifest = store.install(file)
        if activate:
            store.activate(manifest.model_id)
    except AIError as exc:
        console.print(f"[red]Error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    console.print(f"Installed {manifest.model_id} ({manifest.task.value}).")


@models_app.command("activate")
def models_activate(
    name: Annotated[str, typer.Argument(help="name-version, or a name for its newest version")],
    data_dir: DataDirOption = None,
) -> None:
    """Make an installed model the one its task uses."""
    from qamqor.ai.registry import ModelStore

    store = ModelStore(_models_dir(data_dir))
    store.ensure_shipped()
    try:
        manifest = store.activate(name)
    except AIError as exc:
        console.print(f"[red]Error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    console.print(f"{manifest.task.value}: {manifest.model_id} is active.")


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
    app.command("reanalyse")(reanalyse)
    app.add_typer(models_app, name="models")
