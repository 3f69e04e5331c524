"""The audit trail: every read or change of patient data is written here, through ``record``."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from sqlalchemy.orm import Session

from qamqor.core.models import AuditEvent


class AuditAction(StrEnum):
    """What was done. The values are what the audit table has always stored."""

    # Signing in and users
    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGIN_BLOCKED = "login_blocked"
    LOGOUT = "logout"
    USER_CHANGED = "user_changed"
    # The archive: pages, DICOMweb, DIMSE
    VIEW = "view"
    VIEW_PAGE = "view_page"
    SEARCH = "search"
    STORE = "store"
    RETRIEVE = "retrieve"
    RETRIEVE_METADATA = "retrieve-metadata"
    RETRIEVE_FRAMES = "retrieve-frames"
    RETRIEVE_BULKDATA = "retrieve-bulkdata"
    RETRIEVE_RENDERED = "retrieve-rendered"
    RETRIEVE_THUMBNAIL = "retrieve-thumbnail"
    DICOM_FIND = "dicom-find"
    DICOM_MOVE = "dicom-move"
    DICOM_GET = "dicom-get"
    # Reading
    OPEN = "open"
    CLAIM = "claim"
    RELEASE = "release"
    SET_URGENCY = "set_urgency"
    REPORT_DRAFT = "report_draft"
    REPORT_SIGN = "report_sign"
    REPORT_AMEND = "report_amend"
    REPORT_PDF = "report_pdf"
    # Registry, scheduling, FHIR
    FHIR_READ = "fhir_read"
    FHIR_SEARCH = "fhir_search"
    FHIR_BOOK = "fhir_book"
    QUEUE_CALL = "queue_call"
    # Kiosks
    KIOSK_ACTIVATED = "kiosk_activated"
    KIOSK_CODE_SENT = "kiosk_code_sent"
    KIOSK_SIGN_IN = "kiosk_sign_in"
    KIOSK_VIEW = "kiosk_view"
    KIOSK_BOOK = "kiosk_book"
    KIOSK_RESCHEDULE = "kiosk_reschedule"
    KIOSK_CANCEL = "kiosk_cancel"
    KIOSK_CHECK_IN = "kiosk_check_in"


def record(
    session: Session,
    action: AuditAction,
    *,
    actor: str,
    object_type: str,
    object_id: str | Iterable[str] = "",
    source: str = "",
    detail: str = "",
) -> None:
    """Add the audit event of ``action`` to ``session``, committed with the caller's transaction.

    ``object_id`` may name several objects (a list of studies read at once): one event each.
    """
    ids = [object_id] if isinstance(object_id, str) else list(object_id)
    session.add_all(
        AuditEvent(
            actor=actor[:64],
            action=str(action)[:32],
            object_type=object_type[:32],
            object_id=one[:128],
            source=source[:64],
            detail=detail,
        )
        for one in ids
    )
