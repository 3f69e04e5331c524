"""``qamqor demo init`` (run by ``scripts/start`` on every start): demo users whose passwords
are printed the one time they are made, a small region, a kiosk (both databases)."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from rich.console import Console

from qamqor.demo import init_demo
from qamqor.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
QAMQOR = str(Path(sys.executable).with_name("qamqor"))


def run_demo_init(runtime: Runtime) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    init_demo(runtime, console=console, residents=300)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


@pytest.fixture
def demo_runtime(runtime: Runtime, tmp_path: Path) -> Runtime:
    runtime.settings.shared_data_dir = tmp_path / "no-shared-data"  # no sample images
    return runtime


def test_passwords_are_printed_once_then_only_where_they_are(demo_runtime: Runtime) -> None:
    first = run_demo_init(demo_runtime)
    credentials = demo_runtime.settings.data_dir / "demo-credentials.txt"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    secrets = [
        line.split()[1]
        for line in credentials.read_text().splitlines()
        if line.endswith(("(admin)", "(radiologist)", "(registrar)"))
    ]
    token = credentials.read_text().split("/kiosk/activate): ")[1].split()[0]
    assert len(secrets) == 3 and token
    for secret in [*secrets, token]:
        assert secret in first
    again = run_demo_init(demo_runtime)
    for secret in [*secrets, token]:
        assert secret not in again
    assert str(credentials) in again


def test_the_demo_has_todays_visits_sample_residents_and_readable_codes(
    demo_runtime: Runtime,
) -> None:
    """The demo could not show check-in, the ticket or the hall display: its slots started
    tomorrow and check-in opens two hours before a visit. Now sample residents (IINs in
    demo-credentials.txt) have visits today at the demo kiosk's polyclinic, P1."""
    from sqlalchemy import select

    from qamqor.core.db import utcnow
    from qamqor.kiosk.models import KioskDevice
    from qamqor.registry import is_valid_iin
    from qamqor.registry.models import Facility, Resident
    from qamqor.scheduling import screening
    from qamqor.scheduling import service as scheduling
    from qamqor.scheduling.enums import ScreeningState

    output = run_demo_init(demo_runtime)
    text = (demo_runtime.settings.data_dir / "demo-credentials.txt").read_text()
    iins = re.findall(r"^resident (\d{12}) ", text, re.MULTILINE)
    assert len(iins) == 3 and all(is_valid_iin(iin) for iin in iins)
    readme = (ROOT / "README.md").read_text()
    assert "860904350504" in iins and "860904350504" in readme  # the README's example
    assert "--facility P1" in readme
    for iin in iins:
        assert iin in output

    now = utcnow()
    with demo_runtime.session_factory() as session:
        kiosk_facility = session.scalar(
            select(Facility).join(KioskDevice, KioskDevice.facility_id == Facility.id)
        )
        assert kiosk_facility is not None and kiosk_facility.code == "P1"
        open_now = {}
        for iin in iins:
            resident = session.scalar(select(Resident).where(Resident.iin == iin))
            assert resident is not None
            visits = scheduling.resident_appointments(session, resident_id=resident.id)
            assert len(visits) == 1, iin
            [visit] = visits
            assert visit.facility_id == kiosk_facility.id
            open_now[iin] = visit.start - scheduling.CHECK_IN_EARLY <= now < visit.end
            due = screening.resident_status(
                session,
                resident=resident,
                programs=demo_runtime.settings.screening_programs,
                on=now.date(),
            )
            if resident.sex == "female" and due:
                assert [s.state for s in due] == [ScreeningState.DUE]
                assert scheduling.free_slots(
                    session, specialty="mammography", district_id=kiosk_facility.district_id
                )
        assert sum(open_now.values()) == 2  # two can check in now, one has a later visit
        women = [
            iin
            for iin in iins
            if session.scalar(select(Resident.sex).where(Resident.iin == iin)) == "female"
        ]
        assert len(women) == 2
        # Slots start today: the rest of today can be booked.
        assert (
            scheduling.free_slots(session, limit=1)[0].start.date()
            <= (now + timedelta(days=1)).date()
        )

    # Every start renews what is over and keeps what is current: no second visit.
    again = run_demo_init(demo_runtime)
    with demo_runtime.session_factory() as session:
        for iin in iins:
            resident_id = session.scalar(select(Resident.id).where(Resident.iin == iin))
            assert resident_id is not None
            assert len(scheduling.resident_appointments(session, resident_id=resident_id)) == 1
    assert (
        "860904350504" in again
        and text == (demo_runtime.settings.data_dir / "demo-credentials.txt").read_text()
    )


def test_the_readme_commands_work_with_the_demo_facility_codes(demo_runtime: Runtime) -> None:
    """``qamqor kiosk add ... --facility P1`` and ``POST /api/queue/P1/call-next``."""
    from fastapi.testclient import TestClient

    from qamqor.scheduling import service as scheduling
    from qamqor.web.app import create_app

    run_demo_init(demo_runtime)
    settings = demo_runtime.settings
    env = {
        **os.environ,
        "QAMQOR_DATA_DIR": str(settings.data_dir),
        "QAMQOR_DATABASE_URL": settings.database_url,
    }
    added = subprocess.run(
        [QAMQOR, "kiosk", "add", "hall-kiosk-1", "--facility", "P1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert added.stdout.strip().startswith("qmq_")

    text = (settings.data_dir / "demo-credentials.txt").read_text()
    password = re.search(r"^registrar (\S+) \(registrar\)$", text, re.MULTILINE).group(1)
    with demo_runtime.session_factory() as session:
        from sqlalchemy import select

        from qamqor.registry.models import Facility

        p1 = session.scalar(select(Facility).where(Facility.code == "P1"))
        assert p1 is not None
        p1_id = p1.id
    with demo_runtime.session_factory() as session:
        ticket = scheduling.issue_ticket(session, facility_id=p1_id, specialty="therapist")
        session.commit()
        code = ticket.code
    client = TestClient(create_app(demo_runtime))
    auth = ("registrar", password)
    called = client.post("/api/queue/P1/call-next", json={"room": "104"}, auth=auth)
    assert called.status_code == 200 and called.json() == {"code": code, "room": "104"}
    by_id = client.post(f"/api/queue/{p1_id}/call-next", json={"room": "104"}, auth=auth)
    assert by_id.status_code == 200 and by_id.json()["code"] is None
    unknown = client.post("/api/queue/NOPE/call-next", json={"room": "104"}, auth=auth)
    assert unknown.status_code == 404
