from __future__ import annotations

import io
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory, MembershipFactory
from tests.webportal.interfaces.api.receiver import webhook_receiver
from webportal import crypto
from webportal.accounts.models import Role
from webportal.api.models import WebhookDelivery, WebhookEndpoint
from webportal.cases import services
from webportal.cases.models import Batch, ModelVersion
from webportal.celery import app as celery_app
from webportal.notifications import webhooks
from webportal.pipeline import batch_job

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _http_allowed(local_receivers_allowed) -> None:
    """The receivers of these tests listen on 127.0.0.1, allowed as an on-site LIS would be."""


def test_the_documented_recipe_verifies_a_signature_and_refuses_tampering() -> None:
    body = b'{"type":"batch.done"}'
    now = int(time.time())
    header = webhooks.sign(secret="whsec_x", timestamp=now, body=body)
    assert webhooks.verify_signature(secret="whsec_x", header=header, body=body)
    assert not webhooks.verify_signature(secret="whsec_y", header=header, body=body)
    assert not webhooks.verify_signature(secret="whsec_x", header=header, body=body + b" ")
    stale = webhooks.sign(secret="whsec_x", timestamp=now - 301, body=body)
    assert not webhooks.verify_signature(secret="whsec_x", header=stale, body=body)
    assert not webhooks.verify_signature(secret="whsec_x", header="nonsense", body=body)


def test_a_finished_batch_posts_a_signed_event_to_the_labs_endpoint(
    member, case, tiny_model: ModelVersion, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    sent: list[int] = []
    monkeypatch.setattr(
        webhooks, "_send", lambda delivery_id, countdown=0: sent.append(delivery_id)
    )
    with webhook_receiver() as receiver:
        endpoint = webhooks.register_endpoint(lab=member.lab, url=receiver.url)
        batch = services.submit_batch(
            case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
        )
        with django_capture_on_commit_callbacks(execute=True):
            batch_job.process_batch(batch_id=batch.pk)
        delivery = WebhookDelivery.objects.get()
        assert sent == [delivery.pk]
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) is None
        (request,) = receiver.requests
    headers = {key.lower(): value for key, value in request.headers.items()}
    assert webhooks.verify_signature(
        secret=endpoint.secret, header=headers["hematovision-signature"], body=request.body
    )
    event = json.loads(request.body)
    assert event["type"] == headers["hematovision-event"] == "batch.done"
    assert event["id"] == headers["hematovision-delivery"] == str(delivery.event_id)
    assert event["data"]["batch"]["id"] == batch.pk
    assert event["data"]["batch"]["report_url"] == (
        f"{settings.PUBLIC_URL}/api/v1/batches/{batch.pk}/report/"
    )
    assert event["data"]["batch"]["patient"] == (case.patient.external_id if case.patient else None)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)


def _come_due(delivery_id: int) -> None:
    """As if the wait before the row's next try had passed."""
    WebhookDelivery.objects.filter(pk=delivery_id, status="pending").update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )


def test_a_failing_receiver_is_retried_with_backoff_then_logged_as_failed(member, settings) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_RETRY_BASE_SECONDS = 10
    with webhook_receiver(status=503) as receiver:
        webhooks.register_endpoint(lab=member.lab, url=receiver.url)
        (delivery,) = webhooks.emit(lab=member.lab, event="batch.failed", data={"batch": {}})
        waits = []
        for _ in range(3):
            waits.append(webhooks.attempt_delivery(delivery_id=delivery.pk))
            row = WebhookDelivery.objects.get(pk=delivery.pk)
            if row.next_attempt_at is not None:
                assert row.last_attempt_at is not None
                gap = (row.next_attempt_at - row.last_attempt_at).total_seconds()
                assert gap == waits[-1]
            _come_due(delivery.pk)
        assert len(receiver.requests) == 3
    assert waits == [10.0, 20.0, None]
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 503)
    assert "503" in delivery.last_error
    assert webhooks.attempt_delivery(delivery_id=delivery.pk) is None  # nothing more is sent


def test_an_unreachable_receiver_is_logged_with_the_reason(member) -> None:
    webhooks.register_endpoint(lab=member.lab, url="http://127.0.0.1:9/nothing")
    (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
    assert webhooks.attempt_delivery(delivery_id=delivery.pk) is not None
    delivery.refresh_from_db()
    assert delivery.last_status_code is None
    # A class of failure, never the operating system's text ("Connection refused" is a port scan).
    assert delivery.last_error == "Could not connect to 127.0.0.1."


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://10.0.0.8/hook",
        "https://192.168.1.10/hook",
        "https://2130706433/hook",  # 127.0.0.1 as one number
    ],
)
def test_webhooks_to_addresses_inside_the_network_are_refused_at_registration(
    member, settings, url: str
) -> None:
    settings.DEBUG = False
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    with pytest.raises(webhooks.WebhookError, match="inside the network"):
        webhooks.register_endpoint(lab=member.lab, url=url)
    assert not WebhookEndpoint.objects.exists()


def test_a_registered_endpoint_no_longer_allowed_is_refused_at_delivery_and_its_answer_unseen(
    member, settings
) -> None:
    with webhook_receiver(status=401) as receiver:
        webhooks.register_endpoint(lab=member.lab, url=receiver.url)
        settings.OUTBOUND_ALLOWED_NETWORKS = []  # the operator withdrew the allowance
        (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
        webhooks.attempt_delivery(delivery_id=delivery.pk)
        assert receiver.requests == []
    delivery.refresh_from_db()
    assert delivery.last_status_code is None
    assert delivery.last_error.startswith("Refused:")
    assert "401" not in delivery.last_error


def test_a_redirect_from_a_receiver_is_not_followed(member) -> None:
    with webhook_receiver(status=302) as receiver:
        webhooks.register_endpoint(lab=member.lab, url=receiver.url)
        (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
        webhooks.attempt_delivery(delivery_id=delivery.pk)
        assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_status_code) == ("pending", 302)
    assert "not followed" in delivery.last_error


def test_an_endpoint_hears_only_the_events_it_asked_for(member) -> None:
    webhooks.register_endpoint(lab=member.lab, url="https://lis.example/a", events=["batch.done"])
    webhooks.register_endpoint(lab=member.lab, url="https://lis.example/b")
    assert len(webhooks.emit(lab=member.lab, event="batch.done", data={})) == 2
    assert len(webhooks.emit(lab=member.lab, event="report.final", data={})) == 1


def test_urls_must_be_https_unless_allowed_and_events_known(member, settings) -> None:
    settings.DEBUG = False
    with pytest.raises(webhooks.WebhookError, match="https"):
        webhooks.register_endpoint(lab=member.lab, url="http://lis.example/hook")
    with pytest.raises(webhooks.WebhookError, match="credentials"):
        webhooks.register_endpoint(lab=member.lab, url="https://u:p@lis.example/hook")
    with pytest.raises(webhooks.WebhookError, match="Unknown event"):
        webhooks.register_endpoint(lab=member.lab, url="https://lis.example/", events=["x"])
    assert not WebhookEndpoint.objects.exists()


def test_an_integrator_registers_lists_and_removes_a_webhook_through_the_api(
    api: APIClient, member
) -> None:
    created = api.post(
        reverse("api:webhook_list"),
        {"url": "https://lis.example/hook", "events": ["batch.done", "report.final"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_")
    assert body["lab"] == member.lab.slug
    listed = api.get(reverse("api:webhook_list")).json()["results"]
    assert [hook["id"] for hook in listed] == [body["id"]]
    assert "secret" not in listed[0]
    assert api.delete(reverse("api:webhook_detail", args=[body["id"]])).status_code == 204
    assert api.get(reverse("api:webhook_list")).json()["results"] == []


def test_the_delivery_log_and_a_redelivery_through_the_api(
    api: APIClient, member, monkeypatch
) -> None:
    monkeypatch.setattr(webhooks, "_send", lambda delivery_id, countdown=0: None)
    endpoint = webhooks.register_endpoint(lab=member.lab, url="https://lis.example/hook")
    (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={"batch": {"id": 1}})
    log = api.get(reverse("api:webhook_deliveries", args=[endpoint.pk])).json()["results"]
    assert [entry["id"] for entry in log] == [delivery.pk]
    again = api.post(reverse("api:webhook_redeliver", args=[endpoint.pk, delivery.pk]))
    assert again.status_code == 202
    assert again.json()["event_id"] == str(delivery.event_id)
    assert WebhookDelivery.objects.count() == 2


def test_a_read_only_token_cannot_register_webhooks(read_only_api: APIClient) -> None:
    response = read_only_api.post(
        reverse("api:webhook_list"), {"url": "https://lis.example/hook"}, format="json"
    )
    assert response.status_code == 403
    assert not WebhookEndpoint.objects.exists()


def test_a_lab_admin_registers_a_webhook_in_the_portal_and_reads_its_log(monkeypatch) -> None:
    monkeypatch.setattr(webhooks, "_send", lambda delivery_id, countdown=0: None)
    admin = MembershipFactory.create(role=Role.ADMIN)
    client = Client()
    client.force_login(admin.user)
    response = client.post(
        reverse("integrations:register_webhook"),
        {"url": "https://lis.example/hook", "events": ["batch.done"]},
    )
    assert response.status_code == 200
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret in response.content.decode()
    (delivery,) = webhooks.emit(lab=admin.lab, event="batch.done", data={})
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", attempts=6)
    page = client.get(reverse("integrations:index")).content.decode()
    assert endpoint.secret not in page
    assert "batch.done" in page
    assert "Failed" in page
    redelivered = client.post(reverse("integrations:redeliver", args=[delivery.pk]))
    assert redelivered.status_code == 302
    assert WebhookDelivery.objects.filter(event_id=delivery.event_id).count() == 2


# --- the outbox -----------------------------------------------------------------------------


def test_the_delivery_rows_are_written_in_the_transaction_of_the_change(
    member, case, tiny_model: ModelVersion
) -> None:
    """Not in an on-commit callback: a crash between commit and callback lost the event."""
    webhooks.register_endpoint(lab=member.lab, url="https://lis.example/hook")
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    with transaction.atomic():
        Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.FAILED, error="x")
        webhooks.batch_finished_on_commit(batch_id=batch.pk)
        (delivery,) = WebhookDelivery.objects.all()
        assert delivery.next_attempt_at is not None

    def change_that_fails() -> None:
        with transaction.atomic():
            webhooks.batch_finished_on_commit(batch_id=batch.pk)
            raise RuntimeError("the change is rolled back")

    with pytest.raises(RuntimeError):
        change_that_fails()
    assert WebhookDelivery.objects.count() == 1  # the event went with its change


def test_a_delivery_whose_message_was_lost_is_sent_by_the_periodic_task(member) -> None:
    with webhook_receiver() as receiver:
        webhooks.register_endpoint(lab=member.lab, url=receiver.url)
        (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
        # No task ever ran for it (its message was lost, or the broker was down).
        assert webhooks.deliver_due() == 1
        assert len(receiver.requests) == 1
        assert webhooks.deliver_due() == 0
    delivery.refresh_from_db()
    assert (delivery.status, delivery.next_attempt_at) == ("delivered", None)


def test_a_delivery_is_sent_once_when_the_task_and_the_poll_both_try_it(member) -> None:
    with webhook_receiver() as receiver:
        webhooks.register_endpoint(lab=member.lab, url=receiver.url)
        (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            next_attempt_at=timezone.now() - timedelta(seconds=5)
        )
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) is None  # delivered
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) is None  # nothing to claim
        assert webhooks.deliver_due() == 0
        assert len(receiver.requests) == 1


def test_a_failing_receiver_gets_exactly_the_documented_number_of_tries(member, settings) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 4
    with webhook_receiver(status=500) as receiver:
        webhooks.register_endpoint(lab=member.lab, url=receiver.url)
        (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
        for _ in range(10):  # many more polls than tries, each after the wait
            webhooks.deliver_due()
            webhooks.attempt_delivery(delivery_id=delivery.pk)  # and a duplicate message
            _come_due(delivery.pk)
        assert len(receiver.requests) == 4
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 4)


def test_no_countdown_is_handed_to_the_broker(
    member, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(
        celery_app, "send_task", lambda name, **kwargs: sent.append({"name": name, **kwargs})
    )
    webhooks.register_endpoint(lab=member.lab, url="https://lis.example/hook")
    with django_capture_on_commit_callbacks(execute=True):
        (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
    assert [message["args"] for message in sent] == [(delivery.pk,)]
    assert not {"countdown", "eta"} & set(sent[0])
    schedule = celery_app.conf.beat_schedule["deliver-due-webhooks"]
    assert schedule["task"] == "workers.tasks.deliver_due_webhooks"
    assert schedule["schedule"] <= settings.BROKER_VISIBILITY_TIMEOUT_SECONDS


def test_removing_an_endpoint_cancels_its_pending_deliveries(member) -> None:
    with webhook_receiver(status=500) as receiver:
        endpoint = webhooks.register_endpoint(lab=member.lab, url=receiver.url)
        (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
        webhooks.attempt_delivery(delivery_id=delivery.pk)
        webhooks.remove_endpoint(endpoint=endpoint)
        _come_due(delivery.pk)
        assert webhooks.deliver_due() == 0
        assert webhooks.attempt_delivery(delivery_id=delivery.pk) is None
        assert len(receiver.requests) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.next_attempt_at) == ("cancelled", None)


def test_redeliver_to_a_removed_endpoint_answers_404_and_sends_nothing(
    api: APIClient, member
) -> None:
    endpoint = webhooks.register_endpoint(lab=member.lab, url="https://lis.example/hook")
    (delivery,) = webhooks.emit(lab=member.lab, event="batch.done", data={})
    webhooks.remove_endpoint(endpoint=endpoint)
    again = api.post(reverse("api:webhook_redeliver", args=[endpoint.pk, delivery.pk]))
    assert again.status_code == 404
    admin = MembershipFactory.create(role=Role.ADMIN, lab=member.lab)
    client = Client()
    client.force_login(admin.user)
    assert client.post(reverse("integrations:redeliver", args=[delivery.pk])).status_code == 404
    with pytest.raises(webhooks.WebhookError, match="removed"):
        webhooks.redeliver(delivery=delivery)
    assert WebhookDelivery.objects.count() == 1


def test_webhook_secrets_are_encrypted_at_rest(member, settings) -> None:
    endpoint = webhooks.register_endpoint(lab=member.lab, url="https://lis.example/hook")
    secret = endpoint.secret
    assert secret.startswith("whsec_")
    stored = WebhookEndpoint.objects.filter(pk=endpoint.pk).values_list(
        "secret_encrypted", flat=True
    )[0]
    assert secret not in stored
    assert stored.startswith("fernet:")
    # A key of the operator's: the first encrypts, the old (derived) key still decrypts.
    old_key = crypto.derived_key(settings.SECRET_KEY).decode()
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old_key]
    assert WebhookEndpoint.objects.get(pk=endpoint.pk).secret == secret
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(crypto.DecryptionFailed):
        _ = WebhookEndpoint.objects.get(pk=endpoint.pk).secret


def test_a_report_event_says_who_which_version_what_it_replaces_and_links_absolutely(
    member, settings, django_capture_on_commit_callbacks
) -> None:
    from tests.factories import ModelVersionFactory, PatientFactory, classified_batch
    from webportal.reports import services as reports

    settings.PUBLIC_URL = "https://portal.example.org"
    webhooks.register_endpoint(lab=member.lab, url="https://lis.example/hook")
    case = CaseFactory.create(
        lab=member.lab, patient=PatientFactory.create(lab=member.lab, external_id="MRN-3")
    )
    batch = classified_batch(
        case=case,
        model_version=ModelVersionFactory.create(classes=["neutrophil", "lymphocyte"]),
        predictions=[("neutrophil", 0.99)] * 3,
    )
    pathologist = MembershipFactory.create(lab=member.lab, role=Role.PATHOLOGIST).user
    pathologist.first_name, pathologist.last_name = "Ada", "Path"
    pathologist.save()
    signed = reports.sign_report(
        actor=pathologist, report=batch.reports.get(), below_minimum_reason="3 cells: a test"
    )
    amended = reports.amend_report(actor=pathologist, report=signed, reason="relabelled a cell")
    final, amendment = (
        d.payload["data"]["report"]
        for d in WebhookDelivery.objects.filter(event__startswith="report.").order_by("pk")
    )
    assert (final["version"], final["replaces_version"], final["patient"]) == (1, None, "MRN-3")
    assert final["signed_by"] == {"username": pathologist.username, "name": "Ada Path"}
    assert final["url"] == f"https://portal.example.org/api/v1/batches/{batch.pk}/reports/1/"
    assert final["hl7_url"].endswith("/reports/1/hl7/")
    assert (amendment["version"], amendment["replaces_version"]) == (2, 1)
    assert amendment["amendment_reason"] == "relabelled a cell"
    assert amended.signed_at is not None
    assert amendment["issued_at"][:19] == amended.signed_at.isoformat()[:19]
    assert amendment["replaces_issued_at"] is not None
