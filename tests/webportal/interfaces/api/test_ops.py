from __future__ import annotations

import io

import pytest
from django.conf import LazySettings
from django.test import Client
from django.urls import reverse

from tests.conftest import noisy_jpeg_bytes
from tests.factories import UserFactory
from webportal.cases import services
from webportal.cases.models import ModelVersion
from webportal.pipeline import batch_job

pytestmark = pytest.mark.django_db


def test_health_answers_ok_whenever_the_process_answers(settings: LazySettings) -> None:
    from webportal.celery import use_broker

    use_broker("redis://127.0.0.1:1/0", settings.CELERY_BROKER_FOLDER)  # nothing listens there
    response = Client().get(reverse("healthz"))
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def _alive_worker(*, seconds_ago: float = 0, classifies: bool = True) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from webportal.ops import monitoring

    monitoring.record_worker_heartbeat(
        hostname=f"w{seconds_ago}{classifies}@host",
        queues=["routine", "stat"] if classifies else ["adapt"],
        classifies=classifies,
        started_at=timezone.now(),
    )
    if seconds_ago:
        from webportal.cases.models import WorkerHeartbeat

        WorkerHeartbeat.objects.filter(hostname=f"w{seconds_ago}{classifies}@host").update(
            seen_at=timezone.now() - timedelta(seconds=seconds_ago)
        )


def test_ready_when_database_broker_and_a_classifying_worker_answer() -> None:
    _alive_worker()
    response = Client().get(reverse("readyz"))
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": True, "broker": True, "workers": 1}


def test_not_ready_without_any_worker() -> None:
    response = Client().get(reverse("readyz"))
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "database": True,
        "broker": True,
        "workers": 0,
    }


def test_not_ready_when_the_only_workers_are_stale_or_adapt_only(settings: LazySettings) -> None:
    _alive_worker(seconds_ago=settings.WORKER_ALIVE_SECONDS + 1)
    _alive_worker(classifies=False)
    response = Client().get(reverse("readyz"))
    assert response.status_code == 503
    assert response.json()["workers"] == 0


def test_not_ready_naming_the_broker_when_it_is_down(settings: LazySettings) -> None:
    from webportal.celery import use_broker

    _alive_worker()
    use_broker("redis://127.0.0.1:1/0", settings.CELERY_BROKER_FOLDER)  # nothing listens there
    response = Client().get(reverse("readyz"))
    assert response.status_code == 503
    assert response.json()["broker"] is False
    assert response.json()["database"] is True


def test_not_ready_when_the_filesystem_brokers_folder_cannot_be_written(tmp_path) -> None:
    from webportal.celery import use_broker

    _alive_worker()
    use_broker("filesystem://", tmp_path / "broker")
    (tmp_path / "broker" / "queue").rmdir()
    (tmp_path / "broker" / "queue").write_text("not a folder")
    response = Client().get(reverse("readyz"))
    assert response.status_code == 503
    assert response.json()["broker"] is False


def test_metrics_are_refused_without_staff_login_or_token(member) -> None:
    client = Client()
    assert client.get(reverse("metrics")).status_code == 403
    client.force_login(member.user)
    assert client.get(reverse("metrics")).status_code == 403
    assert Client().get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer wrong").status_code == 403


def test_metrics_count_queue_depth_batches_and_predictions(
    case, tiny_model: ModelVersion, settings: LazySettings
) -> None:
    settings.METRICS_TOKEN = "scrape-me"

    def submit(count: int, priority: str):
        files = [(f"c{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(count)]
        return services.submit_batch(case=case, created_by=None, files=files, priority=priority)

    done = submit(2, "routine")
    batch_job.process_batch(batch_id=done.pk)
    submit(3, "stat")
    submit(4, "routine")
    body = Client().get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer scrape-me").content.decode()
    assert 'hematovision_batches{status="queued"} 2' in body
    assert 'hematovision_batches{status="done"} 1' in body
    assert 'hematovision_queue_depth_images{queue="stat"} 3' in body
    assert 'hematovision_queue_depth_images{queue="routine"} 4' in body
    # Counted by the worker when the batch finished, not by counting tables on this scrape.
    assert "hematovision_images_classified_total 2.0" in body
    assert 'hematovision_batches_finished_total{status="done"} 1.0' in body
    assert 'hematovision_webhook_deliveries{status="pending"} 0.0' in body
    assert 'hematovision_adaptation_jobs{status="queued"} 0.0' in body
    assert 'hematovision_workers_alive{kind="classify"} 0.0' in body
    assert 'hematovision_broker_queue_messages{queue="stat"} 0.0' in body
    from webportal.celery import PROCESS_BATCH_TASK, app

    app.send_task(PROCESS_BATCH_TASK, args=(0,), queue="stat")  # one message waits in `stat`
    body = Client().get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer scrape-me").content.decode()
    assert 'hematovision_broker_queue_messages{queue="stat"} 1.0' in body
    assert 'hematovision_broker_queue_messages{queue="routine"} 0.0' in body
    staff = UserFactory.create(is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(reverse("metrics")).status_code == 200


def test_metrics_show_how_old_the_oldest_heartbeat_of_a_processing_batch_is(
    case, tiny_model: ModelVersion, settings: LazySettings
) -> None:
    from datetime import timedelta

    from django.utils import timezone
    from prometheus_client.parser import text_string_to_metric_families

    from webportal.cases.models import Batch

    settings.METRICS_TOKEN = "scrape-me"
    files = [("c.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    stalled = services.submit_batch(case=case, created_by=None, files=files)
    fresh = services.submit_batch(case=case, created_by=None, files=files)
    now = timezone.now()
    Batch.objects.filter(pk=stalled.pk).update(
        status=Batch.Status.PROCESSING, heartbeat_at=now - timedelta(seconds=400)
    )
    Batch.objects.filter(pk=fresh.pk).update(
        status=Batch.Status.PROCESSING, heartbeat_at=now - timedelta(seconds=5)
    )
    body = Client().get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer scrape-me").content.decode()
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if not sample.labels
    }
    assert 400 <= samples["hematovision_oldest_processing_heartbeat_age_seconds"] < 460
    Batch.objects.update(status=Batch.Status.DONE)
    body = Client().get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer scrape-me").content.decode()
    assert "hematovision_oldest_processing_heartbeat_age_seconds 0.0" in body


def test_the_worker_health_check_passes_on_a_fresh_heartbeat_and_fails_on_a_stale_one(
    settings: LazySettings,
) -> None:
    from datetime import timedelta

    from django.core.management import CommandError, call_command
    from django.utils import timezone

    from webportal.cases.models import WorkerHeartbeat
    from webportal.ops import monitoring

    with pytest.raises(CommandError, match="no heartbeat from celery@box"):
        call_command("worker_alive", "--hostname", "celery@box")
    monitoring.record_worker_heartbeat(
        hostname="celery@box", queues=["routine"], classifies=True, started_at=timezone.now()
    )
    call_command("worker_alive", "--hostname", "celery@box")
    WorkerHeartbeat.objects.update(
        seen_at=timezone.now() - timedelta(seconds=settings.WORKER_ALIVE_SECONDS + 5)
    )
    with pytest.raises(CommandError, match="last heartbeat is"):
        call_command("worker_alive", "--hostname", "celery@box")


def test_metrics_show_the_engine_each_live_classifying_worker_runs(settings: LazySettings) -> None:
    import os

    from django.utils import timezone

    from webportal.ops import monitoring

    settings.METRICS_TOKEN = "scrape-me"
    for name in ("a@box", "b@box"):
        monitoring.record_worker_heartbeat(
            hostname=name, queues=["routine"], classifies=True, started_at=timezone.now()
        )
    assert not monitoring.record_worker_engine(main_pid=os.getpid(), host="elsewhere", engine="x")
    assert monitoring.record_worker_engine(main_pid=os.getpid(), host="box", engine="ort-fp32")
    body = Client().get(reverse("metrics"), HTTP_AUTHORIZATION="Bearer scrape-me").content.decode()
    assert 'hematovision_worker_engines{engine="ort-fp32"} 2.0' in body
    assert 'hematovision_workers_alive{kind="classify"} 2.0' in body
