"""Demo data for a first start: users to log in with, and real images in the archive."""

from __future__ import annotations

import secrets
from pathlib import Path

from rich.console import Console
from sqlalchemy import select

from qamqor.core.auth import Role, create_token, create_user
from qamqor.core.models import User
from qamqor.runtime import Runtime

DEMO_USERS = [
    ("admin", Role.ADMIN),
    ("radiologist", Role.RADIOLOGIST),
    ("registrar", Role.REGISTRAR),
]
#: Residents of the demo region on a first start. 20,000 keep a first start on SQLite at a
#: few seconds; ``qamqor registry demo --residents 1000000`` builds the full-size region.
DEMO_RESIDENTS = 20_000
DEMO_KIOSK = "kiosk"


def init_demo(runtime: Runtime, *, console: Console, residents: int | None = None) -> None:
    """Create the demo users (once), the demo region (once) and import the sample images."""
    credentials_file = runtime.settings.data_dir / "demo-credentials.txt"
    with runtime.session_factory() as session:
        if session.scalar(select(User.id).limit(1)) is None:
            lines = []
            for username, role in DEMO_USERS:
                password = secrets.token_urlsafe(12)
                create_user(session, username=username, password=password, role=role)
                lines.append(f"{username} {password} ({role})")
            kiosk = create_user(
                session, username=DEMO_KIOSK, password=secrets.token_urlsafe(24), role=Role.KIOSK
            )
            token = create_token(session, user=kiosk, name="demo kiosk")
            lines.append(f"kiosk device token (open /kiosk/activate): {token}")
            session.commit()
            credentials_file.write_text("\n".join(lines) + "\n")
            credentials_file.chmod(0o600)
    if credentials_file.exists():
        console.print(f"Demo users (also in {credentials_file}):")
        console.print(credentials_file.read_text(), highlight=False)

    from qamqor.scheduling.demo import generate_with_progress, registry_is_empty

    if registry_is_empty(runtime.engine):
        console.print("Creating the demo region (registry, doctors, schedules)...")
        generate_with_progress(
            runtime.engine, console=console, residents=residents or DEMO_RESIDENTS
        )

    sample_dir = Path(runtime.settings.shared_data_dir) / "dicom"
    if sample_dir.is_dir():
        from qamqor.pacs.importer import import_paths

        import_paths(runtime.archive, [str(sample_dir)], console=console)
    else:
        console.print(f"No sample images at {sample_dir}; the archive starts empty.")
