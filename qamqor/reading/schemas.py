"""The structured report's content (validated at the edge, stored as JSON)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qamqor.reading.enums import (
    BiRads,
    BreastFindingType,
    BreastLocation,
    ChestFindingType,
    Density,
    FollowUp,
    LungZone,
    Side,
    Template,
)

FreeText = Annotated[str, Field(max_length=4000)]
SizeMm = Annotated[float, Field(gt=0, le=300)]


class BreastFinding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    side: Side
    kind: BreastFindingType
    location: BreastLocation
    size_mm: SizeMm | None = None


class ChestFinding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ChestFindingType
    zone: LungZone
    size_mm: SizeMm | None = None


class ReportContent(BaseModel):
    """A report as the radiologist filled it in. Drafts may be incomplete; ``check_complete``
    says what a signed report still lacks."""

    model_config = ConfigDict(extra="forbid")

    template: Template
    density: Density | None = None
    birads_right: BiRads | None = None
    birads_left: BiRads | None = None
    breast_findings: list[BreastFinding] = Field(default_factory=list, max_length=20)
    chest_findings: list[ChestFinding] = Field(default_factory=list, max_length=20)
    follow_up: FollowUp | None = None
    findings_text: FreeText = ""
    impression: FreeText = ""

    @model_validator(mode="after")
    def _one_template(self) -> ReportContent:
        if self.template is Template.MAMMO and self.chest_findings:
            raise ValueError("a mammography report has no chest findings")
        if self.template is Template.CHEST and (
            self.breast_findings or self.density or self.birads_left or self.birads_right
        ):
            raise ValueError("a chest report has no breast assessment")
        return self

    def missing_for_signing(self) -> list[str]:
        """What must be filled in before signing (English field names, translated at the edge)."""
        missing: list[str] = []
        if self.template is Template.MAMMO:
            if self.density is None:
                missing.append("density")
            if self.birads_right is None:
                missing.append("birads_right")
            if self.birads_left is None:
                missing.append("birads_left")
        elif self.chest_findings and self.follow_up is None:
            missing.append("follow_up")
        if not self.impression.strip():
            missing.append("impression")
        return missing

    @property
    def suspicious(self) -> bool:
        """Whether the radiologist found something that needs action."""
        if self.template is Template.MAMMO:
            return any(
                b is not None and b.suspicious for b in (self.birads_right, self.birads_left)
            )
        return bool(self.chest_findings)


class AgreementChoice(BaseModel):
    value: Literal["agree", "ai_missed", "ai_false_alarm", ""] = ""
