"""The node's own encoding of C-STORE responses is byte for byte pynetdicom's."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from qamqor.pacs.dimse.node import store_response_command


def _response(status: int, *, uid_length: int, message_id: int = 7) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1." + "9" * (uid_length - 12)
    primitive.Status = status
    return primitive


def _pynetdicom_bytes(primitive: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = message.encode_msg(1, 16384)
    ((context_id, pdv),) = pdata.presentation_data_value_list
    assert context_id == 1 and pdv[:1] == b"\x03"
    return pdv[1:]


@pytest.mark.parametrize("uid_length", [20, 21, 64])
@pytest.mark.parametrize(("status", "message_id"), [(0x0000, 1), (0xB000, 65535)])
def test_store_response_encoded_as_pynetdicom_does(
    uid_length: int, status: int, message_id: int
) -> None:
    primitive = _response(status, uid_length=uid_length, message_id=message_id)
    assert store_response_command(primitive) == _pynetdicom_bytes(primitive)


def test_responses_with_failure_details_are_left_to_pynetdicom() -> None:
    primitive = _response(0xA700, uid_length=30)
    primitive.ErrorComment = "the archive's storage cannot be written"
    assert store_response_command(primitive) is None
    primitive = _response(0xA900, uid_length=30)
    primitive.OffendingElement = [0x00080018]
    assert store_response_command(primitive) is None
