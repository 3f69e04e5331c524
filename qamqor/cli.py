"""``qamqor``: the command line (Typer)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from qamqor.capabilities import register_commands
from qamqor.core.commands import (
    DataDirOption,
    configure_logging,
    console,
    install_runtime_builder,
    open_runtime,
    settings_for,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from qamqor.core.models import User
    from qamqor.core.runtime import Runtime
    from qamqor.core.settings import Settings

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


def _build_runtime(settings: Settings, *, recover: bool = False) -> Runtime:
    from qamqor.runtime import build_runtime  # imported when a command needs it: --help is fast

    return build_runtime(settings, recover=recover)


install_runtime_builder(_build_runtime)


@app.command()
def serve(
    data_dir: DataDirOption = None,
    http_port: Annotated[int | None, typer.Option("--http-port")] = None,
    dicom_port: Annotated[int | None, typer.Option("--dicom-port")] = None,
    http_host: Annotated[str | None, typer.Option("--http-host")] = None,
) -> None:
    """Run HTTP (web, DICOMweb, APIs) and the DICOM node in one process."""
    from qamqor.server import run_server

    configure_logging()
    settings = settings_for(
        data_dir, http_port=http_port, dicom_port=dicom_port, http_host=http_host
    )
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

    configure_logging()
    settings = settings_for(data_dir)
    runtime = _build_runtime(settings, recover=False)
    queue = JobQueue(huey=make_huey(settings), session_factory=runtime.session_factory)
    attached = attach_jobs(runtime, queue)
    try:
        queue.run_worker(workers or max(settings.job_workers, 1))
    finally:
        for part in attached:
            part.stop()
        runtime.close()


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDirOption = None) -> None:
    """Bring the database schema up to date."""
    from qamqor.capabilities import migration_dirs
    from qamqor.core.db import upgrade_database

    settings = settings_for(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database(settings.effective_database_url, migration_dirs())
    console.print("Database is up to date.")


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Argument(help="What the migration does, e.g. 'appeal tables'")],
    part: Annotated[str, typer.Option("--part", help="The capability that owns the tables")],
    data_dir: DataDirOption = None,
) -> None:
    """Write a new migration into PART's migrations folder, from what its models changed
    (Alembic autogenerate against the database at its current head)."""
    from alembic import command

    from qamqor.capabilities import CAPABILITIES, import_models, migration_dirs
    from qamqor.core.db import alembic_config, upgrade_database

    package = f"qamqor.{part}"
    if package not in CAPABILITIES:
        console.print(f"[red]Error:[/red] no capability {part!r}")
        raise typer.Exit(2)
    import importlib.util

    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations))) / "migrations"
    if part == "core":
        folder = folder / "versions"
    folder.mkdir(exist_ok=True)
    settings = settings_for(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    locations = sorted({*migration_dirs(), folder})
    upgrade_database(settings.effective_database_url, locations)
    import_models()
    config = alembic_config(settings.effective_database_url, locations)
    command.revision(config, message=message, autogenerate=True, version_path=str(folder))
    console.print(f"Written into {folder}; review it before committing.")


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

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    with open_runtime(settings_for(data_dir)) as runtime, runtime.session_factory() as session:
        user = create_user(
            session, username=username, password=password, role=role, full_name=full_name
        )
        session.commit()
        username = user.username  # spaces around it are dropped; sign-in matches exactly
    console.print(f"User {username} added with role {role}.")


@contextlib.contextmanager
def _existing_user(data_dir: Path | None, username: str) -> Iterator[tuple[Session, User]]:
    """The user ``username`` in a session committed at the end (exit 2 if there is none)."""
    from sqlalchemy import select

    from qamqor.core.models import User

    with open_runtime(settings_for(data_dir)) as runtime, runtime.session_factory() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            console.print(f"[red]Error:[/red] no user {username!r}")
            raise typer.Exit(2)
        yield session, user
        session.commit()


def _change_user(
    data_dir: Path | None, username: str, change: Callable[[Session, User], str]
) -> None:
    """Run ``change(session, user)`` on an existing user, audit it, commit; print what it says."""
    from qamqor.core import audit

    with _existing_user(data_dir, username) as (session, user):
        said = change(session, user)
        audit.record(
            session,
            audit.AuditAction.USER_CHANGED,
            actor="cli",
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

    with open_runtime(settings_for(data_dir), recover=True) as runtime:
        init_demo(runtime, console=console, residents=residents or None)


register_commands(app)  # each part's own commands (qamqor.capabilities)

if __name__ == "__main__":
    app()
