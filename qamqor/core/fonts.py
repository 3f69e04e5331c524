"""The Unicode font for text Qamqor draws itself (PDF reports, labels burnt into AI overlays).

DejaVu Sans covers Kazakh, Russian and English; Debian's ``fonts-dejavu-core`` installs it
(``scripts/start`` and ``scripts/test`` do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

FONT_DIRS: Final = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))


def dejavu_sans(*, bold: bool = False) -> Path | None:
    """The font file, or None where it is not installed."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in FONT_DIRS:
        if (folder / name).is_file():
            return folder / name
    return None
