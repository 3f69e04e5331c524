"""The kiosks' commands: ``qamqor kiosk add``."""

from __future__ import annotations

from typing import Annotated

import typer

from qamqor.core.commands import DataDirOption, console, open_runtime, settings_for
from qamqor.core.errors import QamqorError

kiosk_app = typer.Typer(help="Self-service terminals and hall displays.", no_args_is_help=True)


@kiosk_app.command("add")
def kiosk_add(
    name: Annotated[str, typer.Argument(help="The device's name, e.g. kiosk-p1-hall")],
    facility: Annotated[str, typer.Option("--facility", help="The facility's code")],
    data_dir: DataDirOption = None,
) -> None:
    """Register a kiosk (or hall display) at a facility and print its device token once.

    Open /kiosk/activate on the device and enter the token; revoke it to switch the device off.
    """
    from qamqor.kiosk.service import add_device
    from qamqor.registry import facility_by_key

    with open_runtime(settings_for(data_dir)) as runtime, runtime.session_factory() as session:
        try:
            facility_id = facility_by_key(session, facility).id
        except QamqorError:
            console.print(f"[red]Error:[/red] no facility with code {facility!r}")
            raise typer.Exit(2) from None
        token = add_device(session, name=name, facility_id=facility_id)
        session.commit()
    typer.echo(token)


def register(app: typer.Typer) -> None:
    app.add_typer(kiosk_app, name="kiosk")
