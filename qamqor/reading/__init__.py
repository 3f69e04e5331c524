"""The radiologist's reading workstation: worklist, viewer pages, structured reports.

Public surface: the services in :mod:`qamqor.reading.service` (worklist, claims, reports), the
coded values in :mod:`qamqor.reading.enums`, and the events the part announces:
:data:`REPORT_SIGNED` (payload ``study_instance_uid``, ``version``) and :data:`CLAIM_CHANGED`
(payload ``study_instance_uid``, ``claimed_by``: "" when released).
"""

from qamqor.reading.events import CLAIM_CHANGED, REPORT_SIGNED

__all__ = ["CLAIM_CHANGED", "REPORT_SIGNED"]
