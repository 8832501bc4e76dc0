"""A worker's heartbeat makes /readyz true; a killed or stopped worker makes it false."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import LazySettings
from django.test import Client
from django.urls import reverse

from tests.services import celery_worker, kill_worker, wait_until
from webportal.cases.models import WorkerHeartbeat
from webportal.celery import use_broker

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _ready() -> bool:
    return Client().get(reverse("readyz")).status_code == 200


def test_readiness_follows_a_real_worker_through_start_kill_and_clean_stop(
    tmp_path: Path, settings: LazySettings, tiny_model
) -> None:
    settings.WORKER_ALIVE_SECONDS = 4
    folder = tmp_path / "broker"
    use_broker("filesystem://", folder)
    assert not _ready()  # no worker yet

    beat_every = {"WORKER_HEARTBEAT_SECONDS": "1"}
    with celery_worker(
        broker_url="filesystem://", broker_folder=folder, log_path=tmp_path / "killed.log",
        extra_env=beat_every,
    ) as worker:  # fmt: skip
        wait_until(_ready, timeout=90, what="the first worker's heartbeat")
        kill_worker(worker)
        # Killed outright: no goodbye; it stops counting once its heartbeat is too old.
        wait_until(lambda: not _ready(), timeout=15, what="the killed worker to go stale")
    assert WorkerHeartbeat.objects.count() == 1  # its last row stays, stale

    with celery_worker(
        broker_url="filesystem://", broker_folder=folder, log_path=tmp_path / "stopped.log",
        extra_env=beat_every,
    ):  # fmt: skip
        wait_until(_ready, timeout=90, what="the second worker's heartbeat")
        body = Client().get(reverse("readyz")).json()
        assert body["workers"] == 1
        # Its pool process reports the engine it loaded the model with on the same row.
        wait_until(
            lambda: WorkerHeartbeat.objects.filter(seen_at__isnull=False).exclude(engine="")
            .order_by("-started_at").exists(),
            timeout=60, what="the engine on the heartbeat",
        )  # fmt: skip
        latest = WorkerHeartbeat.objects.order_by("-started_at").first()
        assert latest is not None
        assert latest.engine in {"eager", "channels-last", "fused-channels-last", "ort-fp32"}
    # A warm shutdown removes its row at once: not ready, without waiting for staleness.
    assert not _ready()
    assert WorkerHeartbeat.objects.count() == 1
