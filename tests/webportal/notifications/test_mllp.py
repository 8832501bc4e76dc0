from __future__ import annotations

import socket
import threading

import pytest

from tests.factories import ReportFactory
from tests.mllp_listener import mllp_listener
from webportal.notifications import mllp
from webportal.reports import hl7v2
from webportal.reports.results import result_document


@pytest.mark.django_db
def test_a_real_listener_receives_the_message_and_its_ack_is_accepted() -> None:
    text = hl7v2.oru_r01(document=result_document(report=ReportFactory.create()), control_id="m-7")
    with mllp_listener() as listener:
        ack = mllp.send(
            address=(listener.host, listener.port), message=text, control_id="m-7", timeout=5
        )
    assert ack.accepted
    assert ack.code == "AA"
    assert ack.control_id == "m-7"
    assert listener.messages == [text]


@pytest.mark.django_db
def test_a_rejecting_receiver_is_not_taken_for_acceptance() -> None:
    text = hl7v2.oru_r01(document=result_document(report=ReportFactory.create()), control_id="m-8")
    with mllp_listener(ack_code="AR") as listener:
        ack = mllp.send(
            address=(listener.host, listener.port), message=text, control_id="m-8", timeout=5
        )
    assert not ack.accepted
    assert ack.code == "AR"


def test_a_receiver_that_never_answers_times_out_with_a_clear_error() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True)
    thread.start()
    try:
        with pytest.raises(mllp.MllpError, match=r"No acknowledgement within 0\.5 s"):
            mllp.send(
                address=server.getsockname(), message="MSH|^~\\&|x", control_id="c", timeout=0.5
            )
    finally:
        for connection in accepted:
            connection.close()
        server.close()


def test_a_closed_port_is_a_connection_error_without_the_receivers_words() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    address = probe.getsockname()
    probe.close()
    with pytest.raises(mllp.MllpError) as caught:
        mllp.send(address=address, message="MSH|^~\\&|x", control_id="c", timeout=2)
    assert str(caught.value) == "Could not connect to the receiver."


def test_an_ack_for_another_message_is_refused() -> None:
    ack_text = mllp.ack_for("MSH|^~\\&|LIS|F|HV|L|20260101||ORU^R01^ORU_R01|other|P|2.5.1")
    assert mllp.parse_ack(ack_text).control_id == "other"
    with pytest.raises(mllp.MllpError, match="not an MLLP frame"):
        mllp.unframe(b"garbage")
