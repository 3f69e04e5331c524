"""Residents, facilities, doctors and attachments with their history (both databases)."""

from __future__ import annotations

from datetime import date

import pytest

from qamqor.core.db import write_session
from qamqor.registry import RegistryError, ResidentNotFoundError
from qamqor.registry import service as registry
from qamqor.registry.enums import AttachmentBasis, FacilityKind
from qamqor.registry.errors import FacilityClosedError, InvalidIINError
from qamqor.runtime import Runtime
from tests.registry.region import build_region


def test_resident_gets_birth_date_and_sex_from_the_iin(runtime: Runtime) -> None:
    region = build_region(runtime)
    with runtime.session_factory() as session:
        woman = registry.resident_by_iin(session, region.woman_iin)
        assert (woman.birth_date, woman.sex) == (date(1975, 3, 8), "female")
        man = registry.resident_by_iin(session, region.man_iin)
        assert man.phone == "+77017654321"  # 8 701 ... normalised


def test_bad_iin_unknown_resident_and_duplicates(runtime: Runtime) -> None:
    region = build_region(runtime)
    with runtime.session_factory() as session:
        bad = region.woman_iin[:11] + str((int(region.woman_iin[11]) + 1) % 10)
        with pytest.raises(InvalidIINError):
            registry.resident_by_iin(session, bad)
        with pytest.raises(ResidentNotFoundError):
            registry.resident_by_iin(session, "860904350504")
        with pytest.raises(RegistryError, match="registered already"):
            registry.register_resident(
                session, iin=region.woman_iin, family_name="A", given_name="B"
            )
        with pytest.raises(RegistryError, match="phone"):
            registry.register_resident(
                session, iin="860904350504", family_name="A", given_name="B", phone="12345"
            )


def test_attachment_history_and_rules(runtime: Runtime) -> None:
    region = build_region(runtime)
    with write_session(runtime.session_factory) as session:
        registry.attach(
            session,
            resident_id=region.man_id,
            facility_id=region.other_polyclinic_id,
            basis=AttachmentBasis.RELOCATION,
            on=date(2024, 5, 1),
        )
    with runtime.session_factory() as session:
        history = registry.attachment_history(session, region.man_id)
        assert [(h.facility_id, h.valid_from, h.valid_to, h.basis) for h in history] == [
            (region.other_polyclinic_id, date(2024, 5, 1), None, AttachmentBasis.RELOCATION),
            (region.polyclinic_id, date(2020, 1, 1), date(2024, 5, 1), "application"),
        ]
        current = registry.current_attachment(session, region.man_id)
        assert current is not None and current.facility_id == region.other_polyclinic_id
        with pytest.raises(RegistryError, match="already"):
            registry.attach(
                session,
                resident_id=region.man_id,
                facility_id=region.other_polyclinic_id,
                basis="application",
                on=date(2025, 1, 1),
            )
        with pytest.raises(RegistryError, match="before the current"):
            registry.attach(
                session,
                resident_id=region.man_id,
                facility_id=region.polyclinic_id,
                basis="application",
                on=date(2023, 1, 1),
            )
        hospital = registry.create_facility(
            session,
            code="H1",
            name="Аурухана",
            kind=FacilityKind.HOSPITAL,
            district_id=region.district_id,
        )
        with pytest.raises(RegistryError, match="polyclinics only"):
            registry.attach(
                session,
                resident_id=region.man_id,
                facility_id=hospital.id,
                basis="administrative",
                on=date(2025, 1, 1),
            )
        registry.close_facility(session, facility_id=region.polyclinic_id, on=date(2025, 1, 1))
        with pytest.raises(FacilityClosedError):
            registry.attach(
                session,
                resident_id=region.man_id,
                facility_id=region.polyclinic_id,
                basis="administrative",
                on=date(2025, 2, 1),
            )
