"""Coded values of the reading capability."""

from __future__ import annotations

from enum import IntEnum, StrEnum

from qamqor.core.i18n import N_


class ReadingStatus(StrEnum):
    """Where a study stands on the worklist."""

    NEW = "new"
    """Nobody has claimed or reported it."""
    IN_PROGRESS = "in_progress"
    """Claimed by a radiologist (claim not expired), or a draft report exists."""
    REPORTED = "reported"
    """A signed report exists."""

    @property
    def label(self) -> str:
        return {
            "new": N_("New"),
            "in_progress": N_("In progress"),
            "reported": N_("Reported"),
        }[self.value]


class Urgency(IntEnum):
    """Clinical urgency set by the referring side or the radiologist (higher first)."""

    ROUTINE = 0
    URGENT = 1
    EMERGENCY = 2

    @property
    def label(self) -> str:
        return (N_("Routine"), N_("Urgent"), N_("Emergency"))[self.value]


class ReportStatus(StrEnum):
    DRAFT = "draft"
    SIGNED = "signed"
    SUPERSEDED = "superseded"
    """Signed, then amended by a newer version (kept, never changed)."""


class Template(StrEnum):
    """Report templates."""

    MAMMO = "mammo"
    CHEST = "chest"


class Agreement(StrEnum):
    """The radiologist's reading against the AI's (for monitoring the models)."""

    AGREE = "agree"
    AI_MISSED = "ai_missed"
    """The radiologist found something the AI did not flag."""
    AI_FALSE_ALARM = "ai_false_alarm"
    """The AI flagged a study the radiologist found nothing suspicious in."""

    @property
    def label(self) -> str:
        return {
            "agree": N_("Agrees with the AI"),
            "ai_missed": N_("AI missed a finding"),
            "ai_false_alarm": N_("AI false alarm"),
        }[self.value]


class Density(StrEnum):
    """ACR BI-RADS breast composition (5th edition)."""

    A = "a"
    B = "b"
    C = "c"
    D = "d"

    @property
    def label(self) -> str:
        return {
            "a": N_("a: almost entirely fatty"),
            "b": N_("b: scattered fibroglandular density"),
            "c": N_("c: heterogeneously dense"),
            "d": N_("d: extremely dense"),
        }[self.value]


class BiRads(StrEnum):
    """ACR BI-RADS assessment categories 0-6."""

    B0 = "0"
    B1 = "1"
    B2 = "2"
    B3 = "3"
    B4 = "4"
    B5 = "5"
    B6 = "6"

    @property
    def label(self) -> str:
        return {
            "0": N_("0: incomplete, needs additional imaging"),
            "1": N_("1: negative"),
            "2": N_("2: benign"),
            "3": N_("3: probably benign"),
            "4": N_("4: suspicious"),
            "5": N_("5: highly suggestive of malignancy"),
            "6": N_("6: known biopsy-proven malignancy"),
        }[self.value]

    @property
    def suspicious(self) -> bool:
        """Categories that call for action beyond routine screening (0, 4, 5, 6)."""
        return self.value in ("0", "4", "5", "6")


class Side(StrEnum):
    RIGHT = "R"
    LEFT = "L"

    @property
    def label(self) -> str:
        return N_("Right") if self is Side.RIGHT else N_("Left")


class BreastLocation(StrEnum):
    """Where in the breast (clock-face quadrants)."""

    UOQ = "uoq"
    UIQ = "uiq"
    LOQ = "loq"
    LIQ = "liq"
    CENTRAL = "central"
    SUBAREOLAR = "subareolar"
    AXILLARY = "axillary"

    @property
    def label(self) -> str:
        return {
            "uoq": N_("upper outer quadrant"),
            "uiq": N_("upper inner quadrant"),
            "loq": N_("lower outer quadrant"),
            "liq": N_("lower inner quadrant"),
            "central": N_("central"),
            "subareolar": N_("subareolar"),
            "axillary": N_("axillary tail"),
        }[self.value]


class BreastFindingType(StrEnum):
    MASS = "mass"
    CALCIFICATIONS = "calcifications"
    ASYMMETRY = "asymmetry"
    DISTORTION = "distortion"

    @property
    def label(self) -> str:
        return {
            "mass": N_("mass"),
            "calcifications": N_("calcifications"),
            "asymmetry": N_("asymmetry"),
            "distortion": N_("architectural distortion"),
        }[self.value]


class LungZone(StrEnum):
    """Where in the chest: lung and zone (upper, middle, lower)."""

    RU = "RU"
    RM = "RM"
    RL = "RL"
    LU = "LU"
    LM = "LM"
    LL = "LL"

    @property
    def label(self) -> str:
        return {
            "RU": N_("right upper zone"),
            "RM": N_("right middle zone"),
            "RL": N_("right lower zone"),
            "LU": N_("left upper zone"),
            "LM": N_("left middle zone"),
            "LL": N_("left lower zone"),
        }[self.value]


class ChestFindingType(StrEnum):
    NODULE = "nodule"
    MASS = "mass"

    @property
    def label(self) -> str:
        return N_("nodule") if self is ChestFindingType.NODULE else N_("mass")


class FollowUp(StrEnum):
    """Fleischner-style follow-up of a pulmonary nodule (2017 guidelines, simplified)."""

    NONE = "none"
    CT_12M = "ct_12m"
    CT_6_12M = "ct_6_12m"
    CT_3M = "ct_3m"
    PET_BIOPSY = "pet_biopsy"
    CT_NOW = "ct_now"

    @property
    def label(self) -> str:
        return {
            "none": N_("no routine follow-up"),
            "ct_12m": N_("optional CT at 12 months"),
            "ct_6_12m": N_("CT at 6-12 months"),
            "ct_3m": N_("CT at 3 months"),
            "pet_biopsy": N_("CT at 3 months, PET/CT or tissue sampling"),
            "ct_now": N_("chest CT now"),
        }[self.value]


def suggested_follow_up(size_mm: float | None, *, high_risk: bool = False) -> FollowUp:
    """The Fleischner 2017 recommendation for a single solid nodule of ``size_mm``.

    A nodule seen on a radiograph is first characterised by CT; once its size is known:
    < 6 mm: none (low risk) or optional CT at 12 months (high risk); 6-8 mm: CT at 6-12
    months; > 8 mm: CT at 3 months, PET/CT or tissue sampling. Without a size: CT now.
    """
    if size_mm is None or size_mm <= 0:
        return FollowUp.CT_NOW
    if size_mm < 6:
        return FollowUp.CT_12M if high_risk else FollowUp.NONE
    if size_mm <= 8:
        return FollowUp.CT_6_12M
    return FollowUp.PET_BIOPSY
