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
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from webportal.accounts.models import Lab, Role
from webportal.accounts.services import require_role
from webportal.api.models import WebhookDelivery, WebhookEndpoint
from webportal.audit.services import record_event
from webportal.cases.models import Batch
from webportal.celery import DELIVER_WEBHOOK_TASK, app

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
    url = url.strip()
    parts = urlsplit(url)
    allowed = {"https", "http"} if settings.WEBHOOK_ALLOW_HTTP else {"https"}
    if parts.scheme not in allowed or not parts.hostname:
        raise WebhookError(
            "The URL must be https://HOST/..."
            + (" (or http:// here)" if settings.WEBHOOK_ALLOW_HTTP else ".")
        )
    if parts.username or parts.password:
        raise WebhookError("Put no credentials in the URL: every request is signed instead.")
    return url


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
            secret=f"whsec_{secrets.token_urlsafe(32)}",
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
        record_event(
            lab=endpoint.lab, actor=actor, action="webhook.removed", obj=endpoint,
            before={"active": endpoint.is_active}, after={"active": False},
        )  # fmt: skip
    endpoint.refresh_from_db()


def endpoints_of(*, lab: Lab) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(lab=lab, is_active=True)


def deliveries_of(*, lab: Lab) -> QuerySet[WebhookDelivery]:
    return WebhookDelivery.objects.filter(endpoint__lab=lab).select_related("endpoint")


# --- events -------------------------------------------------------------------------------


def _send(delivery_id: int, countdown: float = 0) -> None:
    app.send_task(  # by name: the portal never imports workers/
        DELIVER_WEBHOOK_TASK, args=(delivery_id,), queue="housekeeping", countdown=countdown or None
    )


def emit(*, lab: Lab, event: str, data: dict[str, Any]) -> list[WebhookDelivery]:
    """One delivery per endpoint of the lab that wants the event, sent after commit."""
    body = {
        "type": event,
        "created_at": timezone.now(),
        "lab": lab.slug,
        "data": data,
    }
    deliveries = []
    with transaction.atomic():
        for endpoint in endpoints_of(lab=lab):
            if not endpoint.wants(event):
                continue
            delivery = WebhookDelivery.objects.create(
                endpoint=endpoint, event=event, payload=json.loads(_dumps(body))
            )
            delivery.payload["id"] = str(delivery.event_id)
            delivery.save(update_fields=["payload"])
            deliveries.append(delivery)
            delivery_id = delivery.pk
            transaction.on_commit(lambda delivery_id=delivery_id: _send(delivery_id))  # type: ignore[misc]
    return deliveries


def _dumps(body: Any) -> str:
    return json.dumps(body, cls=DjangoJSONEncoder, separators=(",", ":"), sort_keys=True)


def batch_finished(*, batch_id: int) -> None:
    """batch.done or batch.failed, with what a client needs to fetch the result."""
    batch = Batch.objects.select_related("case", "case__lab").get(pk=batch_id)
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
                "error": batch.error,
                "url": f"/api/v1/batches/{batch.pk}/",
                "report_url": f"/api/v1/batches/{batch.pk}/report/"
                if batch.status == Batch.Status.DONE
                else None,
            }
        },
    )


def batch_finished_on_commit(*, batch_id: int) -> None:
    transaction.on_commit(lambda: batch_finished(batch_id=batch_id))


def report_changed(*, report_id: int) -> None:
    """report.final when signed, report.amended when a new signed version replaces one."""
    from webportal.reports.models import Report

    report = Report.objects.select_related("batch__case__lab").get(pk=report_id)
    event = {
        Report.Status.FINAL: WebhookEndpoint.Event.REPORT_FINAL,
        Report.Status.AMENDED: WebhookEndpoint.Event.REPORT_AMENDED,
    }.get(Report.Status(report.status))
    if event is None:
        return
    base = f"/api/v1/batches/{report.batch_id}/reports/{report.version}/"
    emit(
        lab=report.batch.case.lab,
        event=event,
        data={
            "report": {
                "id": report.pk,
                "batch": report.batch_id,
                "accession_number": report.batch.case.accession_number,
                "version": report.version,
                "status": report.status,
                "url": base,
                "pdf_url": f"{base}pdf/",
                "fhir_url": f"{base}fhir/",
            }
        },
    )


def report_changed_on_commit(*, report_id: int) -> None:
    transaction.on_commit(lambda: report_changed(report_id=report_id))


def report_critical_on_commit(*, report_id: int) -> None:
    """report.critical: a category the lab marks critical (blast) was counted, when a
    preliminary report first becomes critical and when a critical report is signed or amended
    (issue 19). The body is report_changed's, with the critical flags."""

    def send() -> None:
        from webportal.reports.models import Report

        report = Report.objects.select_related("batch__case__lab").get(pk=report_id)
        base = f"/api/v1/batches/{report.batch_id}/reports/{report.version}/"
        emit(
            lab=report.batch.case.lab,
            event=WebhookEndpoint.Event.REPORT_CRITICAL,
            data={
                "report": {
                    "id": report.pk, "batch": report.batch_id, "version": report.version,
                    "accession_number": report.batch.case.accession_number,
                    "status": report.status, "critical": report.critical,
                    "critical_results": [f["message"] for f in report.flags
                                         if f["code"] == "critical"],
                    "url": base, "pdf_url": f"{base}pdf/", "fhir_url": f"{base}fhir/",
                }
            },
        )  # fmt: skip

    transaction.on_commit(send)


# --- delivery -----------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` tries: base x 2^(attempts-1), capped."""
    return float(
        min(
            settings.WEBHOOK_RETRY_MAX_SECONDS,
            settings.WEBHOOK_RETRY_BASE_SECONDS * 2 ** max(0, attempts - 1),
        )
    )


def attempt_delivery(*, delivery_id: int) -> float | None:
    """POST the event once; None when finished (delivered or given up), else seconds to wait.

    Safe to run twice: a delivered or failed delivery is not sent again.
    """
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return None
    endpoint = delivery.endpoint
    body = _dumps(delivery.payload).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 (the scheme was checked at registration)
        endpoint.url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "HematoVision-Webhooks/1",
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: str(delivery.event_id),
            SIGNATURE_HEADER: sign(secret=endpoint.secret, timestamp=timestamp, body=body),
        },
    )
    status_code: int | None = None
    error = ""
    try:
        with urllib.request.urlopen(  # noqa: S310
            request, timeout=settings.WEBHOOK_TIMEOUT_SECONDS
        ) as response:
            status_code = response.status
    except urllib.error.HTTPError as exc:
        status_code, error = exc.code, f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
    delivered = status_code is not None and 200 <= status_code < 300
    now = timezone.now()
    attempts = delivery.attempts + 1
    gave_up = not delivered and attempts >= settings.WEBHOOK_MAX_ATTEMPTS
    status = (
        WebhookDelivery.Status.DELIVERED
        if delivered
        else (WebhookDelivery.Status.FAILED if gave_up else WebhookDelivery.Status.PENDING)
    )
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempts=F("attempts") + 1,
        last_status_code=status_code,
        last_error=error[:2000],
        last_attempt_at=now,
        status=status,
        delivered_at=now if delivered else None,
    )
    if delivered or gave_up:
        log = logger.info if delivered else logger.warning
        log("webhook %s to %s: %s after %d attempt(s)", delivery.event, endpoint.url, status,
            attempts)  # fmt: skip
        return None
    return retry_delay(attempts)


def redeliver(*, delivery: WebhookDelivery, actor: User | None = None) -> WebhookDelivery:
    """Send the same event again (same event id, so a receiver can tell), as a new log entry."""
    endpoint = delivery.endpoint
    if actor is not None:
        require_role(
            user=actor, lab=endpoint.lab, allowed=WEBHOOK_MANAGERS, action="redeliver webhooks"
        )
    with transaction.atomic():
        again = WebhookDelivery.objects.create(
            endpoint=endpoint,
            event_id=delivery.event_id,
            event=delivery.event,
            payload=delivery.payload,
        )
        again_id = again.pk
        transaction.on_commit(lambda: _send(again_id))
    return again
