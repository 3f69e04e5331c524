"""Events the reading capability announces (names importable without the service)."""

from __future__ import annotations

from typing import Final

#: A report is signed: payload ``study_instance_uid: str``, ``version: int``.
REPORT_SIGNED: Final = "reading.report_signed"
#: A study is claimed, taken over or released: payload ``study_instance_uid: str``,
#: ``claimed_by: str`` ("" when released).
CLAIM_CHANGED: Final = "reading.claim_changed"
