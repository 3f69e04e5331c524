"""The registry's demo region: ``qamqor registry demo`` (its generator fills schedules too,
so it lives with scheduling, which builds on the registry)."""

from __future__ import annotations

from typing import Annotated

import typer

from qamqor.core.commands import DataDirOption, console, open_runtime, settings_for

registry_app = typer.Typer(help="Registry and scheduling.", no_args_is_help=True)


@registry_app.command("demo")
def registry_demo(
    residents: Annotated[
        int, typer.Option("--residents", help="Residents (a million: 1000000)", min=1)
    ] = 100_000,
    doctors: Annotated[
        int | None, typer.Option("--doctors", help="Doctors (default: one per 500 residents)")
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Days of schedules", min=1)] = 14,
    seed: Annotated[int, typer.Option("--seed")] = 2026,
    data_dir: DataDirOption = None,
) -> None:
    """Fill an empty registry with a synthetic region (districts, facilities, doctors,
    schedules, residents with valid IINs), with a progress bar and a summary."""
    from qamqor.scheduling.demo import generate_with_progress

    with open_runtime(settings_for(data_dir)) as runtime:
        try:
            generate_with_progress(
                runtime.engine,
                console=console,
                residents=residents,
                doctors=doctors,
                days=days,
                seed=seed,
            )
        except ValueError as exc:
            console.print(f"[red]Error:[/red] {exc}")
            raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
