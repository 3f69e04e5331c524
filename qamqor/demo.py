"""Demo data for a first start: users to log in with, and real images in the archive."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path

from rich.console import Console
from sqlalchemy import select

from qamqor.core.auth import Role, create_user
from qamqor.core.models import User
from qamqor.core.runtime import Runtime

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
    """Create the demo users (once), the demo region (once), install the shipped AI models and
    import the sample images (idempotent); the images are analysed once ``qamqor serve`` runs.

    Passwords and the kiosk token are printed the one time they are made; every later start
    says where they are kept (``demo-credentials.txt`` in the data directory, mode 600)."""
    credentials_file = runtime.settings.data_dir / "demo-credentials.txt"
    new_lines: list[str] = []
    with runtime.session_factory() as session:
        if session.scalar(select(User.id).limit(1)) is None:
            lines = []
            for username, role in DEMO_USERS:
                password = secrets.token_urlsafe(12)
                create_user(session, username=username, password=password, role=role)
                lines.append(f"{username} {password} ({role})")
            session.commit()
            _append(credentials_file, lines)
            new_lines += lines
    from qamqor.scheduling.demo import generate_with_progress, registry_is_empty

    if registry_is_empty(runtime.engine):
        console.print("Creating the demo region (registry, doctors, schedules)...")
        generate_with_progress(
            runtime.engine,
            console=console,
            residents=residents or DEMO_RESIDENTS,
            settings=runtime.settings,
        )

    new_lines += _demo_kiosk(runtime, credentials_file)
    visits, resident_lines = _demo_residents(runtime, credentials_file)
    new_lines += resident_lines
    if new_lines:
        console.print(f"Demo users and kiosk token (shown this once; kept in {credentials_file}):")
        console.print("\n".join(new_lines), highlight=False)
    elif credentials_file.exists():
        console.print(f"The demo users' passwords and the kiosk token are in {credentials_file}.")
    if visits:
        console.print("Demo residents at the kiosk (their IIN on /kiosk; the code is shown there):")
        console.print("\n".join(visits), highlight=False)

    from qamqor.ai.registry import ModelStore

    models = ModelStore(runtime.settings.data_dir / "models")
    for path in models.ensure_shipped():
        console.print(f"Installed the shipped model {path.stem}.")

    sample_dir = Path(runtime.settings.shared_data_dir) / "dicom"
    if sample_dir.is_dir():
        from qamqor.pacs import ArchiveService
        from qamqor.pacs.importer import import_paths

        import_paths(runtime.get(ArchiveService), [str(sample_dir)], console=console)
    else:
        console.print(f"No sample images at {sample_dir}; the archive starts empty.")


def _append(credentials_file: Path, lines: list[str]) -> None:
    """Add lines to the credentials file, readable by its owner only."""
    credentials_file.parent.mkdir(parents=True, exist_ok=True)
    credentials_file.touch(mode=0o600, exist_ok=True)
    credentials_file.chmod(0o600)
    with credentials_file.open("a") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


def _demo_kiosk(runtime: Runtime, credentials_file: Path) -> list[str]:
    """A kiosk device at the demo region's first polyclinic (once); its token is saved.
    Returns the lines written to the credentials file (none when the kiosk was there)."""
    from qamqor import registry
    from qamqor.kiosk.service import add_device

    with runtime.session_factory() as session:
        if session.scalar(select(User.id).where(User.username == DEMO_KIOSK)) is not None:
            return []
        first = registry.facilities(session, kind=registry.FacilityKind.POLYCLINIC, limit=1)
        if not first:
            return []
        token = add_device(session, name=DEMO_KIOSK, facility_id=first[0][0].id)
        session.commit()
    lines = [f"kiosk device token (enter it on /kiosk/activate): {token}"]
    _append(credentials_file, lines)
    return lines


def _demo_residents(runtime: Runtime, credentials_file: Path) -> tuple[list[str], list[str]]:
    """The sample residents at the demo kiosk's polyclinic, with today's visits (renewed on
    every start: check-in opens two hours before a visit). Returns a line per resident about
    their visit, and the lines newly written to the credentials file."""
    from qamqor import registry
    from qamqor.core.db import write_session
    from qamqor.core.timezone import facility_zone, local_time
    from qamqor.kiosk.service import device_facility_id
    from qamqor.scheduling.demo import ensure_demo_visits

    with write_session(runtime.session_factory) as session:
        facility_id = device_facility_id(session, DEMO_KIOSK)
        facility = registry.find_facility(session, facility_id) if facility_id else None
        if facility is None:
            return [], []
        visits = ensure_demo_visits(session, facility_id=facility.id, settings=runtime.settings)
        code, zone = facility.code, facility_zone(runtime.settings, facility.timezone)
    today = datetime.now(zone).date()
    summary = []
    for visit in visits:
        sample = visit.resident
        if visit.start is None:
            when = "no free time found"
        else:
            local = local_time(visit.start, zone)
            day = "today" if local.date() == today else local.strftime("%d.%m.%Y")
            when = f"{sample.visit.value} {day} {local:%H:%M} at {code}"
        summary.append(f"  {sample.iin}  {sample.family_name} {sample.given_name}: {when}")
    known = credentials_file.read_text() if credentials_file.exists() else ""
    lines = [
        f"resident {v.resident.iin} ({v.resident.family_name} {v.resident.given_name}, "
        f"polyclinic {code}): {v.resident.shows}"
        for v in visits
        if f"resident {v.resident.iin} " not in known
    ]
    if lines:
        _append(credentials_file, lines)
    return summary, lines
