"""The ticket receipt speaks the resident's language: no English label on a Kazakh or Russian
ticket (its labels were once hidden from ``pybabel extract`` inside f-strings)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from qamqor.kiosk.receipt import Receipt, receipt_lines, ticket_pdf

RECEIPT = Receipt(
    facility="№1 қалалық емхана",
    code="A-007",
    room="101",
    specialty="Терапевт",
    appointment_time="02.12.2026 10:20",
    issued_at=datetime(2026, 12, 2, 4, 5, tzinfo=UTC),
    issued_text="02.12.2026 10:05",
)
LABELS = {
    "kk": ["Кабинет: 101", "Қабылдау уақыты: 02.12.2026 10:20", "Талон берілді: 02.12.2026 10:05"],
    "ru": ["Каб.: 101", "Время приёма: 02.12.2026 10:20", "Талон выдан: 02.12.2026 10:05"],
    "en": ["Room: 101", "Appointment: 02.12.2026 10:20", "Issued: 02.12.2026 10:05"],
}


@pytest.mark.parametrize("language", ["kk", "ru", "en"])
def test_receipt_lines_are_in_the_ticket_language(language: str) -> None:
    lines = receipt_lines(RECEIPT, language=language)
    for label in LABELS[language]:
        assert label in lines
    if language != "en":
        assert not [line for line in lines if re.search("[A-Za-z]{3}", line)], lines
    assert ticket_pdf(RECEIPT, language=language).startswith(b"%PDF")
