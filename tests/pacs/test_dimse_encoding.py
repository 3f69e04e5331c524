"""The fast path's own encoding of C-STORE responses is byte for byte pynetdicom's, and its own
reading of C-STORE requests gives what pynetdicom's decoding gives."""

from __future__ import annotations

import io

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode

from qamqor.pacs.dimse.fastpath import StoreRequest, read_store_request, store_response_command


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


# C-STORE requests, read by the node's own reader ------------------------------------------------
def _request_command(message_id: int, instance_uid: str, **extra: object) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    primitive.AffectedSOPInstanceUID = instance_uid
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(b"\x08\x00\x16\x00")
    for name, value in extra.items():
        setattr(primitive, name, value)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdata = next(iter(message.encode_msg(1, 16384)))
    _, pdv = pdata.presentation_data_value_list[0]
    assert pdv[:1] == b"\x03"
    return pdv[1:]


def _pynetdicom_request(command: bytes) -> C_STORE:
    message = C_STORE_RQ()
    message.command_set = decode(io.BytesIO(command), True, True)
    return message.message_to_primitive()


@pytest.mark.parametrize("uid_length", [20, 21, 64])
@pytest.mark.parametrize("message_id", [1, 65535])
@pytest.mark.parametrize("originator", [False, True])
def test_store_requests_read_as_pynetdicom_reads_them(
    uid_length: int, message_id: int, originator: bool
) -> None:
    extra: dict[str, object] = {}
    if originator:  # a C-STORE sub-operation of a C-MOVE carries two more elements
        extra = {"MoveOriginatorApplicationEntityTitle": "MOVER", "MoveOriginatorMessageID": 9}
    command = _request_command(message_id, "1.2.826.0.1." + "9" * (uid_length - 12), **extra)
    expected = _pynetdicom_request(command)
    assert read_store_request(command) == StoreRequest(
        message_id=expected.MessageID,
        sop_class_uid=str(expected.AffectedSOPClassUID),
        sop_instance_uid=str(expected.AffectedSOPInstanceUID),
    )


def test_other_commands_and_broken_requests_are_left_to_pynetdicom() -> None:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO

    echo = C_ECHO()
    echo.MessageID = 3
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    (pdata,) = message.encode_msg(1, 16384)
    assert read_store_request(pdata.presentation_data_value_list[0][1][1:]) is None

    command = _request_command(5, "1.2.3.4")
    assert read_store_request(command) is not None
    assert read_store_request(command[:-3]) is None  # cut inside the last element
    no_priority = command.replace(b"\x00\x00\x00\x07\x02\x00\x00\x00\x02\x00", b"")
    assert len(no_priority) < len(command) and read_store_request(no_priority) is None
    assert read_store_request(b"\x08\x00" + command[2:]) is None  # not group 0000
