"""The queue ticket as a PDF receipt for the kiosk's 80 mm receipt printer (fpdf2).

The receipt carries no personal data: the ticket number, the room, the specialty and the times.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fpdf import FPDF

from qamqor.core.i18n import N_, gettext

#: Fonts with Kazakh Cyrillic letters (Debian's fonts-dejavu-core), the first found is used.
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
    Path("/usr/local/share/fonts/DejaVuSans.ttf"),
)


def _font() -> Path:
    for candidate in FONT_CANDIDATES:
        if candidate.is_file():
            return candidate
    raise RuntimeError("no DejaVuSans.ttf: install the Debian package fonts-dejavu-core")


@dataclass(frozen=True)
class Receipt:
    facility: str
    code: str
    room: str
    specialty: str
    appointment_time: str
    issued_at: datetime
    issued_text: str


def receipt_lines(receipt: Receipt, *, language: str) -> list[str]:
    """The details under the number, in ``language`` (the PDF and the printed HTML ticket)."""
    room = gettext(language, N_("Room"))
    lines = [f"{room}: {receipt.room or '-'}", receipt.specialty]
    if receipt.appointment_time:
        appointment = gettext(language, N_("Appointment"))
        lines.append(f"{appointment}: {receipt.appointment_time}")
    issued = gettext(language, N_("Issued"))
    lines.append(f"{issued}: {receipt.issued_text}")
    return lines


def ticket_pdf(receipt: Receipt, *, language: str) -> bytes:
    """An 80 x 110 mm page: facility, "queue ticket", the number in large type, details."""
    pdf = FPDF(orientation="P", unit="mm", format=(80, 110))
    pdf.set_margins(5, 5, 5)
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.add_font("DejaVu", "", str(_font()))
    pdf.set_title(gettext(language, N_("Queue ticket")))
    pdf.set_font("DejaVu", size=10)
    pdf.multi_cell(0, 5, receipt.facility, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("DejaVu", size=12)
    pdf.cell(0, 7, gettext(language, N_("Queue ticket")), align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", size=40)
    pdf.cell(0, 20, receipt.code, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", size=11)
    for line in receipt_lines(receipt, language=language):
        pdf.multi_cell(0, 6, line, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    pdf.set_font("DejaVu", size=9)
    pdf.multi_cell(
        0,
        5,
        gettext(language, N_("Please wait until your number is shown on the hall display.")),
        align="C",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    return bytes(pdf.output())
