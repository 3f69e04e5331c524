"""The FHIR R4 REST API at ``/fhir``: Patient, Practitioner, Organization, Schedule, Slot,
Appointment (models from ``fhir.resources``).

Identifier systems (documented in the CapabilityStatement and README):

- ``http://qamqor.kz/fhir/sid/iin``: a resident's IIN (12 digits, check digit validated). No
  national FHIR NamingSystem for the IIN is published; this URI is Qamqor's and stable.
- ``http://qamqor.kz/fhir/sid/staff-number``: a doctor's staff number.
- ``http://qamqor.kz/fhir/sid/facility-code``: a facility's code.
"""

IIN_SYSTEM = "http://qamqor.kz/fhir/sid/iin"
STAFF_SYSTEM = "http://qamqor.kz/fhir/sid/staff-number"
FACILITY_SYSTEM = "http://qamqor.kz/fhir/sid/facility-code"
SPECIALTY_SYSTEM = "http://qamqor.kz/fhir/CodeSystem/specialty"
FACILITY_KIND_SYSTEM = "http://qamqor.kz/fhir/CodeSystem/facility-kind"
DISTRICT_SEARCH_PARAM = "http://qamqor.kz/fhir/SearchParameter/Slot-district"
FHIR_JSON = "application/fhir+json"
