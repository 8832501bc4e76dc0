"""Webhooks: a lab's endpoints hear about finished batches and signed or amended reports.

Each event is POSTed as JSON with three headers:

    HematoVision-Event: batch.done
    HematoVision-Delivery: <event id, a UUID; the same on every retry and redelivery>
    HematoVision-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body with the endpoint's
secret, compares in constant time, and refuses a timestamp older than the replay window
(WEBHOOK_REPLAY_WINDOW_SECONDS, 5 minutes) and event ids it has seen. `verify_signature` is
that recipe. Any 2xx answer is success; anything else (or no answer within the timeout) is
tried again with exponential backoff, up to WEBHOOK_MAX_ATTEMPTS, then logged as failed; a lab
admin can redeliver from the log.

The deliveries are an outbox (DESIGN.md, "Nothing leaves without a record"): `emit` writes one
row per endpoint in the transaction of the change it reports (a crash loses both or neither),
due at once (`next_attempt_at`). A periodic task (`deliver_due`, Celery beat every
WEBHOOK_POLL_SECONDS) sends every row that is due; after commit, a message for each new row
asks a worker to try it at once, which only saves the wait for the next poll. Whoever sends a
row claims it first (a conditional UPDATE moves `next_attempt_at` past the send's time limit),
so the poll and that message never both send it, and a lost message only delays it. No
countdown is ever handed to the broker, so nothing outlives its visibility timeout. The
signing secret is stored encrypted (webportal.crypto); every request goes out through the
guarded client (webportal.notifications.outbound).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from webportal import crypto
from webportal.accounts.models import Lab, Role
from webportal.accounts.services import require_role
from webportal.api.models import WebhookDelivery, WebhookEndpoint
from webportal.audit.services import record_event
from webportal.cases.models import Batch
from webportal.celery import DELIVER_WEBHOOK_TASK, app
from webportal.notifications import outbound, outbox

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "HematoVision-Signature"
EVENT_HEADER = "HematoVision-Event"
DELIVERY_HEADER = "HematoVision-Delivery"
# Who may register, remove and redeliver: the lab's admin, or its integrator accounts (tokens).
WEBHOOK_MANAGERS = frozenset({Role.ADMIN, Role.INTEGRATOR})


class WebhookError(Exception):
    """A webhook request that cannot be carried out, with a message fit to show the user."""


# --- signing ------------------------------------------------------------------------------


def sign(*, secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    *, secret: str, header: str, body: bytes, now: float | None = None, tolerance: int = 300
) -> bool:
    """The receiver's check, as documented: a valid v1 MAC over a timestamp that is recent."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret=secret, timestamp=timestamp, body=body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


# --- endpoints ----------------------------------------------------------------------------


def _check_url(url: str) -> str:
    """https (http with DEBUG on), no credentials, a public host or one an operator allowed."""
    try:
        return outbound.vet_url(url)
    except outbound.OutboundRefused as exc:
        raise WebhookError(str(exc)) from None


def register_endpoint(
    *,
    lab: Lab,
    url: str,
    events: Iterable[str] = (),
    description: str = "",
    actor: User | None = None,
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret (the caller shows it once)."""
    if actor is not None:
        require_role(user=actor, lab=lab, allowed=WEBHOOK_MANAGERS, action="manage webhooks")
    events = sorted(set(events))
    unknown = set(events) - set(WebhookEndpoint.Event.values)
    if unknown:
        raise WebhookError(f"Unknown event(s): {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            lab=lab,
            url=_check_url(url),
            events=events,
            description=description.strip()[:200],
            secret_encrypted=crypto.encrypt(f"whsec_{secrets.token_urlsafe(32)}"),
            created_by=actor,
        )
        record_event(
            lab=lab, actor=actor, action="webhook.registered", obj=endpoint,
            after={"url": endpoint.url, "events": events},
        )  # fmt: skip
    return endpoint


def remove_endpoint(*, endpoint: WebhookEndpoint, actor: User | None = None) -> None:
    """Stop sending to it; its delivery log stays readable."""
    if actor is not None:
        require_role(
            user=actor, lab=endpoint.lab, allowed=WEBHOOK_MANAGERS, action="manage webhooks"
        )
    with transaction.atomic():
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(is_active=False)
        cancelled = WebhookDelivery.objects.filter(
            endpoint=endpoint, status=WebhookDelivery.Status.PENDING
        ).update(status=WebhookDelivery.Status.CANCELLED, next_attempt_at=None)
        record_event(
            lab=endpoint.lab, actor=actor, action="webhook.removed", obj=endpoint,
            before={"active": endpoint.is_active},
            after={"active": False, "cancelled_deliveries": cancelled},
        )  # fmt: skip
    endpoint.refresh_from_db()


def endpoints_of(*, lab: Lab) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(lab=lab, is_active=True)


def deliveries_of(*, lab: Lab) -> QuerySet[WebhookDelivery]:
    return WebhookDelivery.objects.filter(endpoint__lab=lab).select_related("endpoint")


# --- events -------------------------------------------------------------------------------


def _send(delivery_id: int) -> None:
    """Ask a worker to try one row now (saves the wait for the next poll; may be lost)."""
    app.send_task(  # by name: the portal never imports workers/
        DELIVER_WEBHOOK_TASK, args=(delivery_id,), queue="housekeeping"
    )


def _nudge_after_commit(delivery_ids: list[int]) -> None:
    outbox.nudge_after_commit(
        send=lambda delivery_id: _send(delivery_id),  # looked up when sent (tests replace it)
        delivery_ids=delivery_ids,
        what="webhook delivery",
    )


def emit(*, lab: Lab, event: str, data: dict[str, Any]) -> list[WebhookDelivery]:
    """One delivery row per endpoint of the lab that wants the event, written in the caller's
    transaction (the outbox), due at once."""
    body = {
        "type": event,
        "created_at": timezone.now(),
        "lab": lab.slug,
        "data": data,
    }
    deliveries = []
    now = timezone.now()
    with transaction.atomic():
        for endpoint in endpoints_of(lab=lab):
            if not endpoint.wants(event):
                continue
            delivery = WebhookDelivery(
                endpoint=endpoint, event=event, payload=json.loads(_dumps(body)),
                next_attempt_at=now,
            )  # fmt: skip
            delivery.payload["id"] = str(delivery.event_id)
            delivery.save()
            deliveries.append(delivery)
        _nudge_after_commit([delivery.pk for delivery in deliveries])
    return deliveries


def _dumps(body: Any) -> str:
    return json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":"), sort_keys=True)


def absolute(path: str) -> str:
    """A link a receiver can follow: PUBLIC_URL and the API path."""
    return f"{settings.PUBLIC_URL}{path}"


def batch_finished(*, batch_id: int) -> None:
    """batch.done or batch.failed, with what a client needs to fetch the result."""
    batch = Batch.objects.select_related("case", "case__lab", "case__patient").get(pk=batch_id)
    if batch.status not in {Batch.Status.DONE, Batch.Status.FAILED}:
        return
    event = (
        WebhookEndpoint.Event.BATCH_DONE
        if batch.status == Batch.Status.DONE
        else WebhookEndpoint.Event.BATCH_FAILED
    )
    emit(
        lab=batch.case.lab,
        event=event,
        data={
            "batch": {
                "id": batch.pk,
                "status": batch.status,
                "case": batch.case_id,
                "accession_number": batch.case.accession_number,
                "patient": batch.case.patient.external_id if batch.case.patient else None,
                "error": batch.error,
                "url": absolute(f"/api/v1/batches/{batch.pk}/"),
                "report_url": absolute(f"/api/v1/batches/{batch.pk}/report/")
                if batch.status == Batch.Status.DONE
                else None,
            }
        },
    )


def batch_finished_on_commit(*, batch_id: int) -> None:
    """The name callers know; the rows are written now, in the caller's transaction, so the
    event commits with the batch's new status or not at all (the outbox)."""
    batch_finished(batch_id=batch_id)


def report_changed(*, report_id: int) -> None:
    """report.final when signed, report.amended when a new signed version replaces one."""
    from webportal.reports.models import Report

    report = Report.objects.select_related(
        "batch__case__lab", "batch__case__patient", "signed_by"
    ).get(pk=report_id)
    event = {
        Report.Status.FINAL: WebhookEndpoint.Event.REPORT_FINAL,
        Report.Status.AMENDED: WebhookEndpoint.Event.REPORT_AMENDED,
    }.get(Report.Status(report.status))
    if event is None:
        return
    emit(lab=report.batch.case.lab, event=event, data={"report": report_summary(report)})


def report_summary(report: Any) -> dict[str, Any]:
    """What a receiver files a report event by: who, which version and what it replaces, when
    it was issued and by whom, and absolute links to every form of it."""
    from webportal.reports.models import Report

    base = absolute(f"/api/v1/batches/{report.batch_id}/reports/{report.version}/")
    replaced = (
        Report.objects.filter(batch_id=report.batch_id, version=report.version - 1).first()
        if report.version > 1
        else None
    )
    signer = report.signed_by
    patient = report.batch.case.patient
    return {
        "id": report.pk,
        "batch": report.batch_id,
        "case": report.batch.case_id,
        "accession_number": report.batch.case.accession_number,
        "patient": patient.external_id if patient else None,
        "version": report.version,
        "status": report.status,
        "critical": bool(getattr(report, "critical", False)),
        "issued_at": report.signed_at or report.created_at,
        "signed_by": None
        if signer is None
        else {"username": signer.get_username(), "name": signer.get_full_name()},
        "replaces_version": replaced.version if replaced else None,
        "replaces_issued_at": (replaced.signed_at or replaced.created_at) if replaced else None,
        "amendment_reason": report.amendment_reason or None,
        "url": base,
        "pdf_url": f"{base}pdf/",
        "fhir_url": f"{base}fhir/",
        "hl7_url": f"{base}hl7/",
    }


def report_changed_on_commit(*, report_id: int) -> None:
    """The name callers know; the rows are written now, in the caller's transaction."""
    report_changed(report_id=report_id)


def report_critical_on_commit(*, report_id: int) -> None:
    """report.critical: a category the lab marks critical (blast) was counted, when a
    preliminary report first becomes critical and when a critical report is signed or amended.
    The body is report_changed's, with the critical findings; the rows are written now, in the
    caller's transaction (the outbox), like every event's."""
    from webportal.reports.models import Report

    report = Report.objects.select_related(
        "batch__case__lab", "batch__case__patient", "signed_by"
    ).get(pk=report_id)
    critical_results = [f["message"] for f in report.flags if f["code"] == "critical"]
    emit(
        lab=report.batch.case.lab,
        event=WebhookEndpoint.Event.REPORT_CRITICAL,
        data={"report": {**report_summary(report), "critical_results": critical_results}},
    )


# --- delivery -----------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` tries: base x 2^(attempts-1), capped."""
    return float(
        min(
            settings.WEBHOOK_RETRY_MAX_SECONDS,
            settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1),
        )
    )


def _claim(*, delivery_id: int, now: Any) -> bool:
    return outbox.claim(model=WebhookDelivery, delivery_id=delivery_id, now=now)


def attempt_delivery(*, delivery_id: int) -> float | None:
    """POST the event once if it is due; None when finished (delivered, given up, cancelled)
    or not ours to send now, else the seconds until its next try (written on the row).

    Safe to run twice, at once or later: a row is claimed before it is sent.
    """
    now = timezone.now()
    if not _claim(delivery_id=delivery_id, now=now):
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    if not endpoint.is_active:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.CANCELLED, next_attempt_at=None
        )
        return None
    body = _dumps(delivery.payload).encode()
    timestamp = int(time.time())
    answer = outbound.post(
        endpoint.url,
        content=body,
        headers={
            "Content-Type": "application/json",
            "User-Agent": "HematoVision-Webhooks/1",
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: str(delivery.event_id),
            SIGNATURE_HEADER: sign(secret=endpoint.secret, timestamp=timestamp, body=body),
        },
        timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
    )
    delivered = answer.ok
    now = timezone.now()
    attempts = delivery.attempts + 1
    gave_up = not delivered and attempts >= settings.WEBHOOK_MAX_ATTEMPTS
    wait = None if delivered or gave_up else retry_delay(attempts)
    status = (
        WebhookDelivery.Status.DELIVERED
        if delivered
        else (WebhookDelivery.Status.FAILED if gave_up else WebhookDelivery.Status.PENDING)
    )
    # Only this row's claim is finished here; a removal meanwhile (cancelled) stays cancelled.
    WebhookDelivery.objects.filter(pk=delivery.pk, status=WebhookDelivery.Status.PENDING).update(
        attempts=F("attempts") + 1,
        last_status_code=answer.status_code,
        last_error=answer.error[:2000],
        last_attempt_at=now,
        status=status,
        delivered_at=now if delivered else None,
        next_attempt_at=None if wait is None else now + timedelta(seconds=wait),
    )
    if wait is None:
        log = logger.info if delivered else logger.warning
        log("webhook %s to %s: %s after %d attempt(s)", delivery.event, endpoint.url, status,
            attempts)  # fmt: skip
    return wait


def deliver_due(*, limit: int = outbox.DUE_PER_POLL) -> int:
    """The periodic task's work: try every pending row that is due; the number tried."""
    due = outbox.due(model=WebhookDelivery, limit=limit)
    for delivery_id in due:
        attempt_delivery(delivery_id=delivery_id)
    return len(due)


def redeliver(*, delivery: WebhookDelivery, actor: User | None = None) -> WebhookDelivery:
    """Send the same event again (same event id, so a receiver can tell), as a new log entry.

    Only to an endpoint still registered: a removed one gets nothing more (WebhookError; the
    views answer 404 before this)."""
    endpoint = delivery.endpoint
    if actor is not None:
        require_role(
            user=actor, lab=endpoint.lab, allowed=WEBHOOK_MANAGERS, action="redeliver webhooks"
        )
    with transaction.atomic():
        if not WebhookEndpoint.objects.filter(pk=endpoint.pk, is_active=True).exists():
            raise WebhookError("This endpoint was removed: nothing is sent to it any more.")
        again = WebhookDelivery.objects.create(
            endpoint=endpoint,
            event_id=delivery.event_id,
            event=delivery.event,
            payload=delivery.payload,
            next_attempt_at=timezone.now(),
        )
        _nudge_after_commit([again.pk])
    return again
