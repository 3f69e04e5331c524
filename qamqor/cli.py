"""``qamqor``: the command line (Typer)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from qamqor.core.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from qamqor.core.models import User

# Tracebacks never show local variables: they may hold patient data.
app = typer.Typer(
    help="Qamqor: AI-PACS and digital medical center.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
users_app = typer.Typer(help="Users, roles and API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
demo_app = typer.Typer(help="Demo data.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
registry_app = typer.Typer(help="Registry and scheduling.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
kiosk_app = typer.Typer(help="Self-service terminals and hall displays.", no_args_is_help=True)
app.add_typer(kiosk_app, name="kiosk")

from qamqor.ai.cli import analyze as _ai_analyze  # noqa: E402
from qamqor.ai.cli import models_app  # noqa: E402
from qamqor.ai.cli import reanalyse as _ai_reanalyse  # noqa: E402

app.command("analyze")(_ai_analyze)
app.command("reanalyse")(_ai_reanalyse)
app.add_typer(models_app, name="models")

console = Console(stderr=True)

DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (default: $QAMQOR_DATA_DIR or ./qamqor-data)"),
]


def _settings(data_dir: Path | None = None, **overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        console.print(f"[red]Invalid settings:[/red] {exc}")
        raise typer.Exit(2) from None


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


@app.command()
def serve(
    data_dir: DataDirOption = None,
    http_port: Annotated[int | None, typer.Option("--http-port")] = None,
    dicom_port: Annotated[int | None, typer.Option("--dicom-port")] = None,
    http_host: Annotated[str | None, typer.Option("--http-host")] = None,
) -> None:
    """Run HTTP (web, DICOMweb, APIs) and the DICOM node in one process."""
    from qamqor.server import run_server

    _configure_logging()
    settings = _settings(data_dir, http_port=http_port, dicom_port=dicom_port, http_host=http_host)
    run_server(settings)


@app.command()
def worker(
    data_dir: DataDirOption = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker threads (default: job_workers)")
    ] = None,
) -> None:
    """Run job workers only (AI analyses...), until interrupted.

    With QAMQOR_REDIS_URL any number of workers on other hosts share the jobs; without it they
    use <data dir>/jobs.db like the workers inside 'qamqor serve'.
    """
    from qamqor.capabilities import attach_jobs
    from qamqor.core.jobs import JobQueue, make_huey
    from qamqor.runtime import build_runtime

    _configure_logging()
    settings = _settings(data_dir)
    runtime = build_runtime(settings, recover=False)
    queue = JobQueue(huey=make_huey(settings), session_factory=runtime.session_factory)
    attached = attach_jobs(runtime, queue)
    try:
        queue.run_worker(workers or max(settings.job_workers, 1))
    finally:
        for part in attached:
            part.stop()
        runtime.close()


@app.command("import")
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
    from qamqor.runtime import build_runtime

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        console.print(f"[red]No such file or folder:[/red] {', '.join(missing)}")
        raise typer.Exit(2)
    runtime = build_runtime(_settings(data_dir))
    try:
        summary = import_paths(
            runtime.archive, [str(p) for p in paths], console=console, report=report
        )
    finally:
        runtime.close()
    raise typer.Exit(1 if summary.rejected else 0)


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None) -> None:
    """Bring the database schema up to date."""
    from qamqor.core.db import upgrade_database

    settings = _settings(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.effective_database_url)
    console.print("Database is up to date.")


@users_app.command("add")
def users_add(
    username: str,
    role: Annotated[str, typer.Option("--role", help="admin, radiologist, technologist, ...")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
    full_name: Annotated[str, typer.Option("--full-name")] = "",
    data_dir: DataDirOption = None,
) -> None:
    """Add a user. Without --password-stdin the password is asked for (not echoed)."""
    from qamqor.core.auth import create_user
    from qamqor.core.errors import QamqorError
    from qamqor.runtime import build_runtime

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    runtime = build_runtime(_settings(data_dir), recover=False)
    try:
        with runtime.session_factory() as session:
            user = create_user(
                session, username=username, password=password, role=role, full_name=full_name
            )
            session.commit()
            username = user.username  # spaces around it are dropped; sign-in matches exactly
    except QamqorError as exc:
        console.print(f"[red]Error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    finally:
        runtime.close()
    console.print(f"User {username} added with role {role}.")


@contextlib.contextmanager
def _existing_user(data_dir: Path | None, username: str) -> Iterator[tuple[Session, User]]:
    """The user ``username`` in a session committed at the end (exit 2 if there is none)."""
    from sqlalchemy import select

    from qamqor.core.models import User
    from qamqor.runtime import build_runtime

    runtime = build_runtime(_settings(data_dir), recover=False)
    try:
        with runtime.session_factory() as session:
            user = session.scalar(select(User).where(User.username == username))
            if user is None:
                console.print(f"[red]Error:[/red] no user {username!r}")
                raise typer.Exit(2)
            yield session, user
            session.commit()
    finally:
        runtime.close()


def _change_user(
    data_dir: Path | None, username: str, change: Callable[[Session, User], str]
) -> None:
    """Run ``change(session, user)`` on an existing user, audit it, commit; print what it says."""
    from qamqor.core import audit

    with _existing_user(data_dir, username) as (session, user):
        said = change(session, user)
        audit.record(
            session,
            actor="cli",
            action="user_changed",
            object_type="user",
            object_id=str(user.id),
            source="cli",
            detail=said,
        )
    console.print(f"{username}: {said}")


@users_app.command("disable")
def users_disable(username: str, data_dir: DataDirOption = None) -> None:
    """Disable a user (someone who left): signed out everywhere, API tokens revoked, no
    sign-in until enabled again; the audit trail keeps the name."""
    from qamqor.core.auth import sign_out_everywhere

    def disable(session: Session, user: User) -> str:
        user.active = False
        ended = sign_out_everywhere(session, user)
        return f"disabled; {ended} session(s) and token(s) ended"

    _change_user(data_dir, username, disable)


@users_app.command("enable")
def users_enable(username: str, data_dir: DataDirOption = None) -> None:
    """Let a disabled user sign in again (new sessions and tokens only)."""

    def enable(_session: Session, user: User) -> str:
        user.active = True
        return "enabled"

    _change_user(data_dir, username, enable)


@users_app.command("sign-out")
def users_sign_out(username: str, data_dir: DataDirOption = None) -> None:
    """End every browser session of a user and revoke their API tokens (a lost laptop, a
    leaked token); they can sign in again."""
    from qamqor.core.auth import sign_out_everywhere

    def sign_out(session: Session, user: User) -> str:
        return f"signed out; {sign_out_everywhere(session, user)} session(s) and token(s) ended"

    _change_user(data_dir, username, sign_out)


@users_app.command("token")
def users_token(
    username: str,
    name: Annotated[str, typer.Option("--name", help="What the token is for")] = "",
    days: Annotated[int, typer.Option("--days", help="Lifetime; 0 = no expiry")] = 365,
    data_dir: DataDirOption = None,
) -> None:
    """Create a bearer token for a user and print it (shown once)."""
    from datetime import timedelta

    from qamqor.core.auth import create_token

    with _existing_user(data_dir, username) as (session, user):
        token = create_token(
            session, user=user, name=name, lifetime=timedelta(days=days) if days else None
        )
    typer.echo(token)


@demo_app.command("init")
def demo_init(
    data_dir: DataDirOption = None,
    residents: Annotated[
        int, typer.Option("--residents", help="Synthetic residents of the demo region", min=0)
    ] = 0,
) -> None:
    """Create demo users (printed once), a demo region, and import the sample images."""
    from qamqor.demo import init_demo
    from qamqor.runtime import build_runtime

    runtime = build_runtime(_settings(data_dir))
    try:
        init_demo(runtime, console=console, residents=residents or None)
    finally:
        runtime.close()


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
    from qamqor.runtime import build_runtime
    from qamqor.scheduling.demo import generate_with_progress

    runtime = build_runtime(_settings(data_dir), recover=False)
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
    finally:
        runtime.close()


@kiosk_app.command("add")
def kiosk_add(
    name: Annotated[str, typer.Argument(help="The device's name, e.g. kiosk-p1-hall")],
    facility: Annotated[str, typer.Option("--facility", help="The facility's code")],
    data_dir: DataDirOption = None,
) -> None:
    """Register a kiosk (or hall display) at a facility and print its device token once.

    Open /kiosk/activate on the device and enter the token; revoke it to switch the device off.
    """
    from sqlalchemy import select

    from qamqor.core.errors import QamqorError
    from qamqor.kiosk.service import add_device
    from qamqor.registry.models import Facility
    from qamqor.runtime import build_runtime

    runtime = build_runtime(_settings(data_dir), recover=False)
    try:
        with runtime.session_factory() as session:
            facility_id = session.scalar(select(Facility.id).where(Facility.code == facility))
            if facility_id is None:
                console.print(f"[red]Error:[/red] no facility with code {facility!r}")
                raise typer.Exit(2)
            token = add_device(session, name=name, facility_id=facility_id)
            session.commit()
    except QamqorError as exc:
        console.print(f"[red]Error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    finally:
        runtime.close()
    typer.echo(token)


if __name__ == "__main__":
    app()
