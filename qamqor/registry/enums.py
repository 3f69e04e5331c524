"""Coded values of the registry."""

from __future__ import annotations

from enum import StrEnum

from qamqor.core.i18n import N_


class Sex(StrEnum):
    """Administrative sex (FHIR ``AdministrativeGender``: male, female)."""

    MALE = "male"
    FEMALE = "female"


class FacilityKind(StrEnum):
    """What a facility is (code system ``http://qamqor.kz/fhir/CodeSystem/facility-kind``)."""

    POLYCLINIC = "polyclinic"
    """Primary health care: residents are attached to it."""
    HOSPITAL = "hospital"
    SCREENING_CENTER = "screening_center"


class AttachmentBasis(StrEnum):
    """Why a resident is attached to a primary-care facility."""

    APPLICATION = "application"
    """The resident's own application (free choice of a polyclinic)."""
    RELOCATION = "relocation"
    """The resident moved to the facility's area."""
    ADMINISTRATIVE = "administrative"
    """Decided by the health department (e.g. a facility closed)."""


class Specialty(StrEnum):
    """Doctors' specialties (code system ``http://qamqor.kz/fhir/CodeSystem/specialty``)."""

    GENERAL_PRACTITIONER = "general_practitioner"
    THERAPIST = "therapist"
    PEDIATRICIAN = "pediatrician"
    GYNECOLOGIST = "gynecologist"
    CARDIOLOGIST = "cardiologist"
    NEUROLOGIST = "neurologist"
    OPHTHALMOLOGIST = "ophthalmologist"
    SURGEON = "surgeon"
    ENDOCRINOLOGIST = "endocrinologist"
    MAMMOGRAPHY = "mammography"
    """Screening mammography room (a radiographer and a radiologist)."""
    ENDOSCOPY = "endoscopy"


#: How people read each specialty (translated where shown).
SPECIALTY_NAMES: dict[Specialty, str] = {
    Specialty.GENERAL_PRACTITIONER: N_("General practitioner"),
    Specialty.THERAPIST: N_("Therapist"),
    Specialty.PEDIATRICIAN: N_("Pediatrician"),
    Specialty.GYNECOLOGIST: N_("Gynecologist"),
    Specialty.CARDIOLOGIST: N_("Cardiologist"),
    Specialty.NEUROLOGIST: N_("Neurologist"),
    Specialty.OPHTHALMOLOGIST: N_("Ophthalmologist"),
    Specialty.SURGEON: N_("Surgeon"),
    Specialty.ENDOCRINOLOGIST: N_("Endocrinologist"),
    Specialty.MAMMOGRAPHY: N_("Mammography"),
    Specialty.ENDOSCOPY: N_("Endoscopy"),
}
