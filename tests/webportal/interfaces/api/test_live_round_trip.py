"""An integrator's whole round trip over raw HTTP: a live server and a real Celery worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import LazySettings
from django.db import connection
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from tests.conftest import noisy_jpeg_bytes
from tests.services import celery_worker, database_url, wait_until
from tests.webportal.interfaces.api.http import request
from tests.webportal.interfaces.api.receiver import webhook_receiver
from webportal.api.models import WebhookDelivery
from webportal.cases.models import Batch, ModelVersion
from webportal.celery import use_broker
from webportal.notifications import webhooks

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[4]


def _issue_token(lab_slug: str, settings: LazySettings) -> str:
    """`manage.py issue_token` as an operator runs it: the token alone on stdout."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "issue_token", "--lab", lab_slug, "--username", "lis"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return lines[0]


def test_an_integrator_round_trip_over_http_with_a_real_worker_and_webhooks(
    live_server,
    member,
    tiny_model: ModelVersion,
    tmp_path: Path,
    settings: LazySettings,
    local_receivers_allowed: None,
) -> None:
    broker = tmp_path / "broker"
    use_broker("filesystem://", broker)
    api = f"{live_server.url}/api/v1"
    token = _issue_token(member.lab.slug, settings)
    worker_env = {
        "WEBHOOK_RETRY_BASE_SECONDS": "1",
        "WEBHOOK_MAX_ATTEMPTS": "3",
        # The receivers listen on 127.0.0.1: allowed as an operator allows an on-site LIS.
        "DEBUG": "true",
        "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.1/32",
        "WEBHOOK_POLL_SECONDS": "1",  # retries come from the outbox's poll (beat)
    }
    try:
        with (
            webhook_receiver() as healthy,
            webhook_receiver(status=500) as failing,
            celery_worker(
                broker_url="filesystem://",
                broker_folder=broker,
                log_path=tmp_path / "worker.log",
                extra_env=worker_env,
                beat=True,
            ),
        ):
            hooks = [
                request("POST", f"{api}/webhooks/", token=token,
                        json_body={"url": receiver.url, "events": ["batch.done"]})
                for receiver in (healthy, failing)
            ]  # fmt: skip
            assert [hook.status for hook in hooks] == [201, 201]
            secret = hooks[0].json()["secret"]

            new_case = {"accession_number": "LIVE-1", "patient": "MRN-77"}
            case = request("POST", f"{api}/cases/", token=token, json_body=new_case)
            assert case.status == 201, case.body
            files = [(f"cell-{i}.jpg", noisy_jpeg_bytes()) for i in range(3)]

            def upload():
                return request(
                    "POST", f"{api}/cases/{case.json()['id']}/batches/", token=token,
                    files=files, fields={"priority": "stat"},
                    headers={"Idempotency-Key": "live-upload-1"},
                )  # fmt: skip

            first, retry = upload(), upload()
            assert (first.status, retry.status) == (201, 200), first.body
            batch_id = first.json()["id"]
            assert retry.json()["id"] == batch_id
            assert Batch.objects.filter(case_id=case.json()["id"]).count() == 1

            def status() -> str:
                answer = request("GET", f"{api}/batches/{batch_id}/", token=token)
                assert answer.status == 200
                return str(answer.json()["status"])

            wait_until(lambda: status() == "done", timeout=120, what="the batch to be done")
            wait_until(lambda: len(healthy.requests) == 1, timeout=30, what="the webhook")
            wait_until(
                lambda: WebhookDelivery.objects.filter(status="failed").exists(),
                timeout=60,
                what="the failing receiver to be given up",
            )
    finally:
        use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)

    (event,) = healthy.requests
    headers = {key.lower(): value for key, value in event.headers.items()}
    assert webhooks.verify_signature(
        secret=secret, header=headers["hematovision-signature"], body=event.body
    )
    assert json.loads(event.body)["data"]["batch"]["id"] == batch_id
    assert len(failing.requests) == 3  # tried, retried with backoff, then logged
    failed = WebhookDelivery.objects.get(status="failed")
    assert (failed.attempts, failed.last_status_code) == (3, 500)

    report = request("GET", f"{api}/batches/{batch_id}/report/", token=token)
    assert report.status == 200
    assert report.headers["Content-Type"] == "application/json"
    assert report.json()["total_cells"] == 3
    again = request("GET", f"{api}/batches/{batch_id}/report/", token=token,
                    headers={"If-None-Match": report.headers["ETag"]})  # fmt: skip
    assert again.status == 304
    fhir = request("GET", f"{api}/batches/{batch_id}/report/", token=token,
                   headers={"Accept": "application/fhir+json"})  # fmt: skip
    assert fhir.headers["Content-Type"] == "application/fhir+json"
    bundle = Bundle.model_validate(fhir.json())
    assert bundle.type == "collection"
    assert bundle.entry is not None
    diagnostic = bundle.entry[0].resource
    assert isinstance(diagnostic, DiagnosticReport)
    assert diagnostic.subject is not None
    explicit = request("GET", f"{api}/batches/{batch_id}/report/fhir/", token=token)
    assert explicit.json() == fhir.json()
    pdf = request("GET", f"{api}/batches/{batch_id}/report/", token=token,
                  headers={"Accept": "application/pdf"})  # fmt: skip
    assert pdf.status == 200
    assert pdf.headers["Content-Type"] == "application/pdf"
    assert pdf.body.startswith(b"%PDF")
    explicit_pdf = request("GET", f"{api}/batches/{batch_id}/report/pdf/", token=token)
    assert explicit_pdf.headers["Content-Type"] == "application/pdf"
    assert explicit_pdf.body.startswith(b"%PDF")
