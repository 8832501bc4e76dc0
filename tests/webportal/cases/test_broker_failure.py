"""A broker that fails after the upload committed: the batch, its files and the answer stay."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerUnreachable
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from webportal.api import tokens
from webportal.cases.models import Batch, Image
from webportal.celery import PROCESS_BATCH_TASK, app
from webportal.pipeline import sweeper

# on_commit callbacks run only when a real transaction commits.
pytestmark = pytest.mark.django_db(transaction=True)


def _upload(name: str) -> io.BytesIO:
    handle = io.BytesIO(noisy_jpeg_bytes())
    handle.name = name
    return handle


def test_an_upload_whose_enqueue_fails_answers_201_and_keeps_its_batch_and_files(
    member, case, tiny_model, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    def broker_down(*args: object, **kwargs: object) -> None:
        raise BrokerUnreachable("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(app, "send_task", broker_down)
    issued = tokens.issue_token(lab=member.lab, username="lis", name="LIS")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")

    response = api.post(
        reverse("api:case_batches", args=[case.pk]),
        {"files": [_upload("a.jpg"), _upload("b.jpg")]},
        format="multipart",
    )

    assert response.status_code == 201, response.content
    batch = Batch.objects.get(pk=response.json()["id"])
    assert batch.status == Batch.Status.QUEUED
    stored = [field for image in batch.images.all() for field in (image.file, image.model_input)]
    names = [field.name for field in stored if field]
    assert len(names) >= 2
    assert all(field.storage.exists(name) for field in stored if (name := field.name))
    assert "Connection refused" in caplog.text


def test_the_sweeper_sends_a_batch_whose_enqueue_failed_again(
    case, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webportal.cases import services

    def broker_down(*args: object, **kwargs: object) -> None:
        raise BrokerUnreachable("connection refused")

    monkeypatch.setattr(app, "send_task", broker_down)
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    sent: list[tuple[str, tuple[int, ...]]] = []
    monkeypatch.setattr(app, "send_task", lambda name, args, **_: sent.append((name, args)))
    assert sweeper.sweep_batches().resent_queued == []  # not yet: it may still be on its way

    later = timezone.now() + timedelta(seconds=settings.BATCH_RESEND_AFTER_SECONDS + 1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    report = sweeper.sweep_batches()

    assert report.resent_queued == [batch.pk]
    assert sent == [(PROCESS_BATCH_TASK, (batch.pk,))]
    assert Image.objects.filter(batch=batch).count() == 1


def test_a_batch_never_marked_as_sent_is_resent_counting_from_its_upload(
    case, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webportal.cases import services

    monkeypatch.setattr(services, "send_batch", lambda **_: None)  # lost before it was marked
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    assert Batch.objects.get(pk=batch.pk).enqueued_at is None
    sent: list[int] = []
    monkeypatch.setattr(app, "send_task", lambda name, args, **_: sent.append(args[0]))

    later = timezone.now() + timedelta(seconds=settings.BATCH_RESEND_AFTER_SECONDS + 1)
    monkeypatch.setattr(timezone, "now", lambda: later)

    assert sweeper.sweep_batches().resent_queued == [batch.pk]
    assert sent == [batch.pk]
