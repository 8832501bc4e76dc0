"""The request id of an upload reaches the worker's log lines, with the batch and its lab."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from tests.services import celery_worker, wait_until
from webportal.api import tokens
from webportal.cases.models import Batch
from webportal.celery import use_broker

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_the_workers_lines_for_a_batch_carry_the_uploads_request_id_batch_and_lab(
    member, case, tiny_model, tmp_path: Path
) -> None:
    folder = tmp_path / "broker"
    use_broker("filesystem://", folder)
    issued = tokens.issue_token(lab=member.lab, username="lis", name="LIS")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    log = tmp_path / "worker.log"
    with celery_worker(broker_url="filesystem://", broker_folder=folder, log_path=log):
        upload = io.BytesIO(noisy_jpeg_bytes())
        upload.name = "a.jpg"
        response = api.post(
            reverse("api:case_batches", args=[case.pk]),
            {"files": [upload]},
            format="multipart",
            HTTP_X_REQUEST_ID="upload-7f3a",
        )
        assert response.status_code == 201
        batch_id = response.json()["id"]
        wait_until(
            lambda: Batch.objects.get(pk=batch_id).is_finished, timeout=120, what="the batch"
        )
    lines = []
    for raw in log.read_text().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    assert lines, log.read_text()[-2000:]
    assert all({"time", "level", "logger", "request_id", "batch_id", "lab"} <= set(line)
               for line in lines)  # fmt: skip
    task_lines = [line for line in lines if line["request_id"] == "upload-7f3a"]
    assert task_lines, log.read_text()[-3000:]
    assert {line["batch_id"] for line in task_lines} == {str(batch_id)}
    assert {line["lab"] for line in task_lines} == {member.lab.slug}
