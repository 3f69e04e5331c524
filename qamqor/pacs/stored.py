"""What a store answers: its outcome and the UIDs of the instance (``qamqor.pacs.service``
re-exports them; the writer and the statements use them without importing the service)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from qamqor.pacs.parsing import ParsedInstance


class StoreOutcome(StrEnum):
    STORED = "stored"
    ALREADY_PRESENT = "already present"


@dataclass(frozen=True)
class StoredRef:
    """UIDs of an instance in the archive (no patient data: safe to log and to pass on)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str


@dataclass(frozen=True)
class StoreResult:
    outcome: StoreOutcome
    ref: StoredRef


def ref_of(parsed: ParsedInstance) -> StoredRef:
    return StoredRef(
        study_instance_uid=parsed.study_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        modality=parsed.values.text("Modality", 16),
    )
