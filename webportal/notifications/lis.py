"""Reports to a lab information system: HL7 v2.5.1 ORU^R01 over MLLP, from an outbox.

A lab admin registers a LIS (host and port; the outbound rules decide whether it may be
reached). When a report is signed or amended, one delivery row per active LIS is written in the
same transaction as the signature (the outbox), so the message leaves with the report or not at
all. The periodic task (Celery beat, every WEBHOOK_POLL_SECONDS) sends what is due, and a message
after commit asks for one try at once. A try connects to the vetted address, sends the framed
message and waits for the ACK:

- AA / CA: delivered;
- AE / CE (the LIS could not process this message): failed at once, with its words, since the
  same message would fail again; the lab admin can send it again after fixing the cause;
- AR / CR (rejected, e.g. the LIS is not ready), no answer, a timeout or a refused connection:
  tried again on the webhooks' schedule (webhooks.retry_delay), up to WEBHOOK_MAX_ATTEMPTS.

Each row keeps its MSH-10 control id on every try, so a LIS that got a message but whose ACK was
lost can tell the repeat.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from webportal.accounts.models import Lab, Role
from webportal.accounts.services import require_role
from webportal.api.models import LisDelivery, LisEndpoint
from webportal.audit.services import record_event
from webportal.celery import DELIVER_LIS_TASK, app
from webportal.notifications import mllp, outbound, outbox
from webportal.notifications.webhooks import retry_delay
from webportal.reports import hl7v2
from webportal.reports.models import Report
from webportal.reports.results import result_document

logger = logging.getLogger(__name__)

FATAL_ACKS = frozenset({"AE", "CE"})


class LisError(Exception):
    """A LIS request that cannot be carried out, with a message fit to show the user."""


def register_endpoint(
    *,
    lab: Lab,
    host: str,
    port: int,
    receiving_application: str = "",
    receiving_facility: str = "",
    actor: User | None = None,
) -> LisEndpoint:
    if actor is not None:
        require_role(user=actor, lab=lab, allowed={Role.ADMIN}, action="configure a LIS")
    host = host.strip()
    if not 1 <= port <= 65535:
        raise LisError("The port must be between 1 and 65535.")
    try:
        outbound.vet_tcp(host, port)
    except outbound.OutboundRefused as exc:
        raise LisError(str(exc)) from exc
    with transaction.atomic():
        endpoint = LisEndpoint.objects.create(
            lab=lab,
            host=host,
            port=port,
            receiving_application=receiving_application.strip(),
            receiving_facility=receiving_facility.strip(),
            created_by=actor,
        )
        record_event(
            actor=actor, lab=lab, action="lis.registered", obj=endpoint,
            after={"host": host, "port": port},
        )  # fmt: skip
    return endpoint


def remove_endpoint(*, endpoint: LisEndpoint, actor: User | None = None) -> None:
    """Stop sending to the LIS; what was still pending for it is cancelled (the log stays)."""
    if actor is not None:
        require_role(user=actor, lab=endpoint.lab, allowed={Role.ADMIN}, action="remove a LIS")
    with transaction.atomic():
        LisEndpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
        cancelled = LisDelivery.objects.filter(
            endpoint=endpoint, status=LisDelivery.Status.PENDING
        ).update(status=LisDelivery.Status.CANCELLED, next_attempt_at=None)
        record_event(
            actor=actor, lab=endpoint.lab, action="lis.removed", obj=endpoint,
            after={"active": False, "cancelled_deliveries": cancelled},
        )  # fmt: skip
    endpoint.refresh_from_db()


def endpoints_of(*, lab: Lab) -> QuerySet[LisEndpoint]:
    return LisEndpoint.objects.filter(lab=lab, is_active=True)


def deliveries_of(*, lab: Lab) -> QuerySet[LisDelivery]:
    return LisDelivery.objects.filter(endpoint__lab=lab).select_related(
        "endpoint", "report__batch__case"
    )


def _send(delivery_id: int) -> None:
    app.send_task(DELIVER_LIS_TASK, args=(delivery_id,), queue="housekeeping")


def _nudge_after_commit(delivery_ids: list[int]) -> None:
    outbox.nudge_after_commit(
        send=lambda delivery_id: _send(delivery_id),  # looked up when sent (tests replace it)
        delivery_ids=delivery_ids,
        what="LIS delivery",
    )


def _control_id(report: Report) -> str:
    """MSH-10 of one delivery: the report version it carries, and a part of its own."""
    return f"HV-{report.batch_id}-{report.version}-{uuid.uuid4().hex[:12]}"


def report_changed(*, report: Report) -> list[LisDelivery]:
    """Rows for a report just signed or amended, in the caller's transaction (the outbox)."""
    if report.status not in {Report.Status.FINAL, Report.Status.AMENDED}:
        return []
    now = timezone.now()
    deliveries = []
    with transaction.atomic():
        for endpoint in endpoints_of(lab=report.batch.case.lab):
            delivery = LisDelivery.objects.create(
                endpoint=endpoint, report=report, control_id=_control_id(report),
                next_attempt_at=now,
            )  # fmt: skip
            deliveries.append(delivery)
        _nudge_after_commit([delivery.pk for delivery in deliveries])
    return deliveries


def attempt_delivery(*, delivery_id: int) -> float | None:
    """Send the message once if it is due; None when finished or not ours to send now, else
    the seconds until its next try. Safe to run twice: a row is claimed before it is sent."""
    now = timezone.now()
    if not outbox.claim(model=LisDelivery, delivery_id=delivery_id, now=now):
        return None
    delivery = LisDelivery.objects.select_related(
        "endpoint", "report__batch__case__lab", "report__model_version", "report__signed_by"
    ).get(pk=delivery_id)
    endpoint = delivery.endpoint
    if not endpoint.is_active:
        LisDelivery.objects.filter(pk=delivery.pk).update(
            status=LisDelivery.Status.CANCELLED, next_attempt_at=None
        )
        return None
    message = hl7v2.oru_r01(
        document=result_document(report=delivery.report),
        control_id=delivery.control_id,
        receiving_application=endpoint.receiving_application,
        receiving_facility=endpoint.receiving_facility,
    )
    ack_code, error, fatal = "", "", False
    try:
        address = outbound.vet_tcp(endpoint.host, endpoint.port)
        ack = mllp.send(
            address=address,
            message=message,
            control_id=delivery.control_id,
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
        )
        ack_code = ack.code
        if not ack.accepted:
            fatal = ack.code in FATAL_ACKS
            error = f"The LIS answered {ack.code}" + (f": {ack.text}" if ack.text else ".")
    except outbound.OutboundRefused as exc:
        error = str(exc)  # never what the refused address would have answered
    except mllp.MllpError as exc:
        error = str(exc)
    delivered = not error
    attempts = delivery.attempts + 1
    gave_up = not delivered and (fatal or attempts >= settings.WEBHOOK_MAX_ATTEMPTS)
    wait = None if delivered or gave_up else retry_delay(attempts)
    status = (
        LisDelivery.Status.DELIVERED
        if delivered
        else (LisDelivery.Status.FAILED if gave_up else LisDelivery.Status.PENDING)
    )
    now = timezone.now()
    LisDelivery.objects.filter(pk=delivery.pk, status=LisDelivery.Status.PENDING).update(
        attempts=F("attempts") + 1,
        ack_code=ack_code,
        last_error=error[:2000],
        last_attempt_at=now,
        status=status,
        delivered_at=now if delivered else None,
        next_attempt_at=None if wait is None else now + timedelta(seconds=wait),
    )
    if wait is None:
        log = logger.info if delivered else logger.warning
        log("LIS message %s to %s: %s after %d attempt(s)", delivery.control_id, endpoint,
            status, attempts)  # fmt: skip
    return wait


def deliver_due(*, limit: int = outbox.DUE_PER_POLL) -> int:
    """The periodic task's work: try every LIS delivery that is due; the number tried."""
    due = outbox.due(model=LisDelivery, limit=limit)
    for delivery_id in due:
        attempt_delivery(delivery_id=delivery_id)
    return len(due)


def resend(*, delivery: LisDelivery, actor: User | None = None) -> LisDelivery:
    """Send the same report version again as a new row (a new control id), to a LIS that is
    still registered."""
    endpoint = delivery.endpoint
    if actor is not None:
        require_role(user=actor, lab=endpoint.lab, allowed={Role.ADMIN}, action="resend to a LIS")
    with transaction.atomic():
        if not LisEndpoint.objects.filter(pk=endpoint.pk, is_active=True).exists():
            raise LisError("This LIS was removed: nothing is sent to it any more.")
        again = LisDelivery.objects.create(
            endpoint=endpoint, report=delivery.report, control_id=_control_id(delivery.report),
            next_attempt_at=timezone.now(),
        )  # fmt: skip
        _nudge_after_commit([again.pk])
    return again
