"""Demo data for a first start: users to log in with, and real images in the archive."""

from __future__ import annotations

import secrets
from pathlib import Path

from rich.console import Console
from sqlalchemy import select

from qamqor.core.auth import Role, create_user
from qamqor.core.models import User
from qamqor.runtime import Runtime

DEMO_USERS = [("admin", Role.ADMIN), ("radiologist", Role.RADIOLOGIST)]


def init_demo(runtime: Runtime, *, console: Console) -> None:
    """Create the demo users (once), install the shipped AI models and import the sample images
    (idempotent); the images are analysed once ``qamqor serve`` runs."""
    credentials_file = runtime.settings.data_dir / "demo-credentials.txt"
    with runtime.session_factory() as session:
        if session.scalar(select(User.id).limit(1)) is None:
            lines = []
            for username, role in DEMO_USERS:
                password = secrets.token_urlsafe(12)
                create_user(session, username=username, password=password, role=role)
                lines.append(f"{username} {password} ({role})")
            session.commit()
            credentials_file.write_text("\n".join(lines) + "\n")
            credentials_file.chmod(0o600)
    if credentials_file.exists():
        console.print(f"Demo users (also in {credentials_file}):")
        console.print(credentials_file.read_text(), highlight=False)

    from qamqor.ai.registry import ModelStore

    models = ModelStore(runtime.settings.data_dir / "models")
    for path in models.ensure_shipped():
        console.print(f"Installed the shipped model {path.stem}.")

    sample_dir = Path(runtime.settings.shared_data_dir) / "dicom"
    if sample_dir.is_dir():
        from qamqor.pacs.importer import import_paths

        import_paths(runtime.archive, [str(sample_dir)], console=console)
    else:
        console.print(f"No sample images at {sample_dir}; the archive starts empty.")
