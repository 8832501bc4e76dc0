"""Reports to a LIS as HL7 v2 over MLLP: the outbox, the ACK rules and the outbound rules,
against a real MLLP listener on 127.0.0.1."""

from __future__ import annotations

import pytest
from hl7apy.parser import parse_message

from tests.factories import (
    PBC_CLASSES,
    CaseFactory,
    MembershipFactory,
    ModelVersionFactory,
    classified_batch,
)
from tests.mllp_listener import mllp_listener
from webportal.accounts.models import Role
from webportal.api.models import LisDelivery
from webportal.notifications import lis
from webportal.reports import services
from webportal.reports.models import Report

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch) -> None:
    """The after-commit nudge needs a broker; these tests send by hand, as the poll does."""
    monkeypatch.setattr(lis, "_send", lambda delivery_id: None)


def _obr25(text: str) -> str:
    message = parse_message(text, find_groups=True)
    return str(message.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.to_er7())


def _signed(report: Report) -> Report:
    pathologist = MembershipFactory.create(lab=report.batch.case.lab, role=Role.PATHOLOGIST).user
    return services.sign_report(
        actor=pathologist, report=report, below_minimum_reason="a small test batch"
    )


def _preliminary() -> Report:
    batch = classified_batch(
        case=CaseFactory.create(),
        model_version=ModelVersionFactory.create(classes=PBC_CLASSES, threshold=0.5),
        predictions=[("neutrophil", 0.99)] * 6 + [("lymphocyte", 0.99)] * 4,
    )
    return batch.reports.get()


def test_signing_and_amending_send_f_then_c_and_the_listener_acknowledges_both(
    local_receivers_allowed,
) -> None:
    report = _preliminary()
    with mllp_listener() as listener:
        endpoint = lis.register_endpoint(
            lab=report.batch.case.lab, host=listener.host, port=listener.port
        )
        signed = _signed(report)
        (first,) = LisDelivery.objects.filter(report=signed)
        assert lis.deliver_due() == 1
        pathologist = signed.signed_by
        assert pathologist is not None
        amended = services.amend_report(actor=pathologist, report=signed, reason="typo")
        assert lis.deliver_due() == 1
    rows = list(LisDelivery.objects.filter(endpoint=endpoint).order_by("pk"))
    assert [(row.status, row.ack_code, row.attempts) for row in rows] == [
        ("delivered", "AA", 1),
        ("delivered", "AA", 1),
    ]
    assert rows[1].report == amended
    assert [_obr25(message) for message in listener.messages] == ["F", "C"]
    assert first.control_id in listener.messages[0]


def test_the_row_is_written_with_the_signature_or_not_at_all(
    local_receivers_allowed, monkeypatch
) -> None:
    report = _preliminary()
    lis.register_endpoint(lab=report.batch.case.lab, host="127.0.0.1", port=2575)
    real = lis.report_changed

    def then_crash(*, report: Report) -> list[LisDelivery]:
        real(report=report)
        assert LisDelivery.objects.count() == 1  # written, not yet committed
        raise RuntimeError("the process dies before the signature commits")

    monkeypatch.setattr(lis, "report_changed", then_crash)
    with pytest.raises(RuntimeError):
        _signed(report)
    assert not LisDelivery.objects.exists()
    report.refresh_from_db()
    assert report.status == Report.Status.PRELIMINARY


def test_a_rejecting_lis_is_tried_again_and_an_application_error_fails_at_once(
    local_receivers_allowed, settings
) -> None:
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0
    report = _preliminary()
    with mllp_listener(ack_code="AR") as listener:
        lis.register_endpoint(lab=report.batch.case.lab, host=listener.host, port=listener.port)
        signed = _signed(report)
        (delivery,) = LisDelivery.objects.filter(report=signed)
        assert lis.attempt_delivery(delivery_id=delivery.pk) == 0
        delivery.refresh_from_db()
        assert (delivery.status, delivery.ack_code, delivery.attempts) == ("pending", "AR", 1)
        listener.ack_code = "AE"
        assert lis.attempt_delivery(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert (delivery.status, delivery.ack_code, delivery.attempts) == ("failed", "AE", 2)
    assert delivery.last_error.startswith("The LIS answered AE")


def test_a_lis_inside_the_network_is_refused_unless_the_operator_allowed_it(settings) -> None:
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    report = _preliminary()
    with pytest.raises(lis.LisError):
        lis.register_endpoint(lab=report.batch.case.lab, host="127.0.0.1", port=2575)
    with pytest.raises(lis.LisError):
        lis.register_endpoint(lab=report.batch.case.lab, host="169.254.169.254", port=2575)
    assert not lis.endpoints_of(lab=report.batch.case.lab).exists()


def test_an_allowance_withdrawn_stops_delivery_without_showing_the_answer(
    local_receivers_allowed, settings
) -> None:
    report = _preliminary()
    with mllp_listener() as listener:
        lis.register_endpoint(lab=report.batch.case.lab, host=listener.host, port=listener.port)
        signed = _signed(report)
        settings.OUTBOUND_ALLOWED_NETWORKS = []
        (delivery,) = LisDelivery.objects.filter(report=signed)
        lis.attempt_delivery(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert listener.messages == []
    assert delivery.status == "pending"
    assert delivery.ack_code == ""
    assert "AA" not in delivery.last_error


def test_removing_a_lis_cancels_what_was_pending_and_resending_to_it_is_refused(
    local_receivers_allowed,
) -> None:
    report = _preliminary()
    endpoint = lis.register_endpoint(lab=report.batch.case.lab, host="127.0.0.1", port=9)
    signed = _signed(report)
    lis.remove_endpoint(endpoint=endpoint)
    (delivery,) = LisDelivery.objects.filter(report=signed)
    assert delivery.status == "cancelled"
    assert lis.deliver_due() == 0
    with pytest.raises(lis.LisError, match="removed"):
        lis.resend(delivery=delivery)
