"""The registry: residents keyed by IIN, facilities with districts, doctors, attachments.

Public surface for other parts (``scheduling``, ``kiosk``, ``contact``): the service functions,
the IIN parser, the models and the errors re-exported here.
"""

from qamqor.registry.enums import AttachmentBasis, FacilityKind, Sex, Specialty
from qamqor.registry.errors import (
    FacilityClosedError,
    FacilityNotFoundError,
    InvalidIINError,
    RegistryError,
    ResidentNotFoundError,
)
from qamqor.registry.iin import IIN, is_valid_iin, make_iin, validate_iin

__all__ = [
    "IIN",
    "AttachmentBasis",
    "FacilityClosedError",
    "FacilityKind",
    "FacilityNotFoundError",
    "InvalidIINError",
    "RegistryError",
    "ResidentNotFoundError",
    "Sex",
    "Specialty",
    "is_valid_iin",
    "make_iin",
    "validate_iin",
]
