"""The DICOM node's one mapping of exceptions to DIMSE statuses (``failure_status``)."""

from __future__ import annotations

import pytest

from qamqor.core.errors import PermissionDeniedError
from qamqor.pacs.dimse.handlers import Service, failure_status
from qamqor.pacs.errors import (
    InstanceNotFoundError,
    InvalidInstanceError,
    InvalidQueryError,
    StorageUnavailableError,
    UnsupportedSopClassError,
)


@pytest.mark.parametrize(
    ("error", "service", "expected"),
    [
        (InvalidInstanceError("bad"), Service.STORE, 0xC000),
        (InvalidInstanceError("bad", dimse_status=0xA900), Service.STORE, 0xA900),
        (UnsupportedSopClassError("no"), Service.STORE, 0x0122),
        (StorageUnavailableError("disk"), Service.STORE, 0xA700),
        (InvalidQueryError("key"), Service.FIND, 0xA900),
        (InvalidQueryError("key"), Service.RETRIEVE, 0xA900),
        (StorageUnavailableError("db"), Service.FIND, 0xA700),
        (StorageUnavailableError("db"), Service.RETRIEVE, 0xA701),
        (PermissionDeniedError("no"), Service.FIND, 0x0124),
        (InstanceNotFoundError("gone"), Service.RETRIEVE, 0xC000),
    ],
)
def test_domain_errors_are_answered_by_their_kind_with_their_message(
    error: Exception, service: Service, expected: int
) -> None:
    answer = failure_status(error, service, "test")
    assert (answer.Status, answer.ErrorComment) == (expected, str(error))


@pytest.mark.parametrize(
    ("service", "expected", "comment"),
    [
        (Service.STORE, 0xA700, "the archive could not store it (KeyError)"),
        (Service.FIND, 0xC000, "the query failed (KeyError)"),
        (Service.RETRIEVE, 0xC000, "the retrieve failed (KeyError)"),
    ],
)
def test_unexpected_errors_name_their_type_only(
    service: Service, expected: int, comment: str
) -> None:
    answer = failure_status(KeyError("Doe^Jane"), service, "test")
    assert (answer.Status, answer.ErrorComment) == (expected, comment)
