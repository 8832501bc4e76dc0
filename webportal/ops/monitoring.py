"""What a lab operator watches: readiness (database, broker, workers), queue and throughput."""

from __future__ import annotations

import logging
import os
import statistics
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, cast

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Min, QuerySet, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from webportal.cases.models import Batch, MetricCounter, Prediction, WorkerHeartbeat

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW = timedelta(minutes=5)
LATENCY_WINDOW = timedelta(hours=1)


def check_readiness() -> dict[str, bool | int]:
    """Whether this portal can do its work now: the database answers, the broker takes a
    write, and at least one classifying worker was seen within WORKER_ALIVE_SECONDS. Counts
    only (the endpoint is public)."""
    readiness: dict[str, bool | int] = {
        "database": False,
        "broker": False,
        "workers": 0,
    }
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        readiness["database"] = True
        readiness["workers"] = classifying_workers_alive(now=timezone.now()).count()
    except Exception:
        logger.exception("readiness: database")
    try:
        check_broker_writable()
        readiness["broker"] = True
    except Exception:
        logger.exception("readiness: broker")
    return readiness


def is_ready(readiness: dict[str, bool | int]) -> bool:
    return bool(readiness["database"] and readiness["broker"] and readiness["workers"])


def check_broker_writable() -> None:
    """Raise unless the broker accepts a write now: a probe file in the filesystem broker's
    queue folder (a name no reader takes), or a short-lived key in Redis."""
    from webportal.celery import app

    url = app.conf.broker_url or ""
    if url.startswith("filesystem://"):
        folder = app.conf.broker_transport_options["data_folder_out"]
        probe = os.path.join(folder, f".readyz-{uuid.uuid4().hex}.tmp")
        with open(probe, "wb") as handle:
            handle.write(b"ok")
        os.unlink(probe)
        return
    with app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1, timeout=3)
        if url.startswith(("redis://", "rediss://")):
            redis_client = cast(Any, broker.default_channel).client  # kombu's Redis channel
            redis_client.set("hematovision:readyz", "1", ex=60)


def classifying_workers_alive(*, now: datetime) -> QuerySet[WorkerHeartbeat]:
    since = now - timedelta(seconds=settings.WORKER_ALIVE_SECONDS)
    return WorkerHeartbeat.objects.filter(classifies=True, seen_at__gte=since)


def record_worker_heartbeat(
    *, hostname: str, queues: list[str], classifies: bool, started_at: datetime
) -> None:
    """The worker (workers.heartbeat) says it is alive; one row per worker hostname."""
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": ",".join(sorted(queues))[:255],
            "classifies": classifies,
            "pid": os.getpid(),
            "started_at": started_at,
            "seen_at": timezone.now(),
        },
    )


def record_worker_engine(*, main_pid: int, host: str, engine: str) -> bool:
    """A pool process says which engine it runs, on its worker's row (the worker whose main
    process is `main_pid` on this host: node names end in `@host`); False: no row yet."""
    rows = WorkerHeartbeat.objects.filter(pid=main_pid, hostname__endswith=f"@{host}")
    return bool(rows.update(engine=engine[:64]))


# The counters the workers increment (MetricCounter), in the transaction of what they count.
BATCHES_DONE = "batches_done"
BATCHES_FAILED = "batches_failed"
IMAGES_CLASSIFIED = "images_classified"


def count(*, name: str, by: int = 1) -> None:
    """Add `by` to a counter, in the caller's transaction (so a rolled-back step counts nothing)."""
    if not MetricCounter.objects.filter(name=name).update(value=F("value") + by):
        MetricCounter.objects.get_or_create(name=name)
        MetricCounter.objects.filter(name=name).update(value=F("value") + by)


def counters() -> dict[str, float]:
    return {
        name: float(value) for name, value in MetricCounter.objects.values_list("name", "value")
    }


def forget_worker(*, hostname: str) -> None:
    """A worker that stops cleanly is no longer counted at once."""
    WorkerHeartbeat.objects.filter(hostname=hostname).delete()


def collect_metrics() -> dict[str, float | dict[str, float]]:
    now = timezone.now()
    by_status = {status: 0.0 for status in Batch.Status.values}
    for status, count in (
        Batch.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n")
    ):
        by_status[status] = float(count)
    depth = {"stat": 0.0, "routine": 0.0}
    active = Batch.objects.filter(status__in=[Batch.Status.QUEUED, Batch.Status.PROCESSING])
    for priority, pending in (
        active.values_list("priority")
        .annotate(pending=Sum(F("total_images") - F("processed_images")))
        .values_list("priority", "pending")
    ):
        depth["stat" if priority == Batch.Priority.STAT else "routine"] = float(pending or 0)
    recent = Prediction.objects.filter(created_at__gte=now - THROUGHPUT_WINDOW).count()
    counted = counters()
    oldest_heartbeat = Batch.objects.filter(status=Batch.Status.PROCESSING).aggregate(
        oldest=Min("heartbeat_at")
    )["oldest"]
    latencies = [
        (finished - created).total_seconds()
        for created, finished in Batch.objects.filter(
            status=Batch.Status.DONE, finished_at__gte=now - LATENCY_WINDOW
        ).values_list("created_at", "finished_at")
        if finished is not None
    ]
    return {
        "batches": by_status,
        "queue_depth_images": depth,
        "batches_finished_total": {
            "done": counted.get(BATCHES_DONE, 0.0),
            "failed": counted.get(BATCHES_FAILED, 0.0),
        },
        "images_classified_total": counted.get(IMAGES_CLASSIFIED, 0.0),
        "webhook_deliveries": _webhook_deliveries(),
        "adaptation_jobs": _adaptation_jobs(),
        "workers_alive": _workers_alive(now=now),
        "worker_engines": _worker_engines(now=now),
        "broker_queue_messages": _broker_queue_lengths(),
        "images_per_second": recent / THROUGHPUT_WINDOW.total_seconds(),
        "batch_latency_seconds_p50": _quantile(latencies, 0.5),
        "batch_latency_seconds_p95": _quantile(latencies, 0.95),
        "oldest_processing_heartbeat_age_seconds": (
            max(0.0, (now - oldest_heartbeat).total_seconds()) if oldest_heartbeat else 0.0
        ),
    }


def _webhook_deliveries() -> dict[str, float]:
    from webportal.api.models import WebhookDelivery

    wanted = [WebhookDelivery.Status.PENDING, WebhookDelivery.Status.FAILED]
    found = dict(
        WebhookDelivery.objects.filter(status__in=wanted)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    return {str(status): float(found.get(status, 0)) for status in wanted}


def _adaptation_jobs() -> dict[str, float]:
    from webportal.adaptation.models import AdaptationJob

    found = dict(
        AdaptationJob.objects.values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    return {str(status): float(found.get(status, 0)) for status in AdaptationJob.Status.values}


def _workers_alive(*, now: datetime) -> dict[str, float]:
    since = now - timedelta(seconds=settings.WORKER_ALIVE_SECONDS)
    alive = WorkerHeartbeat.objects.filter(seen_at__gte=since)
    return {
        "classify": float(alive.filter(classifies=True).count()),
        "adapt": float(alive.filter(classifies=False).count()),
    }


def _worker_engines(*, now: datetime) -> dict[str, float]:
    since = now - timedelta(seconds=settings.WORKER_ALIVE_SECONDS)
    alive = WorkerHeartbeat.objects.filter(seen_at__gte=since, classifies=True)
    engines: dict[str, float] = {}
    for engine in alive.values_list("engine", flat=True):
        engines[engine or "not yet known"] = engines.get(engine or "not yet known", 0.0) + 1
    return engines


def _broker_queue_lengths() -> dict[str, float]:
    """Messages waiting in each queue, as the broker counts them; empty when it does not answer."""
    from webportal.celery import ADAPT_QUEUE, QUEUES, app

    lengths: dict[str, float] = {}
    try:
        with app.connection_for_read() as broker:
            broker.ensure_connection(max_retries=1, timeout=3)
            # kombu's virtual channels (Redis, filesystem) count a queue with _size: a passive
            # declare would refuse a queue this connection has not declared yet.
            channel = cast(Any, broker.default_channel)
            for queue in (*QUEUES, ADAPT_QUEUE):
                lengths[queue] = float(channel._size(queue))
    except Exception:
        logger.warning("metrics: the broker's queue lengths are unavailable", exc_info=True)
    return lengths


# How /metrics names and describes each value of collect_metrics (Prometheus exposition by
# prometheus_client): (name, kind, help, label of a dict value or None).
_DESCRIBED: dict[str, tuple[str, str, str | None]] = {
    "batches": ("gauge", "Batches by status.", "status"),
    "queue_depth_images": ("gauge", "Images still to classify, by queue.", "queue"),
    "batches_finished_total": (
        "counter",
        "Batches finished, by outcome, as the workers count them.",
        "status",
    ),
    "images_classified_total": (
        "counter",
        "Images of finished batches, counted by the worker when each batch finishes.",
        None,
    ),
    "webhook_deliveries": ("gauge", "Webhook deliveries pending or failed.", "status"),
    "adaptation_jobs": ("gauge", "Adaptation jobs by status.", "status"),
    "workers_alive": (
        "gauge",
        "Workers whose heartbeat is within WORKER_ALIVE_SECONDS, by kind.",
        "kind",
    ),
    "broker_queue_messages": ("gauge", "Messages waiting in each broker queue.", "queue"),
    "worker_engines": ("gauge", "Classifying workers alive, by the engine they run.", "engine"),
    "images_per_second": ("gauge", "Predictions per second over the last 5 minutes.", None),
    "batch_latency_seconds_p50": ("gauge", "Median upload-to-done time, last hour.", None),
    "batch_latency_seconds_p95": ("gauge", "95th percentile upload-to-done time.", None),
    "oldest_processing_heartbeat_age_seconds": (
        "gauge",
        "Age of the oldest heartbeat among processing batches (0 when none): a stalled worker "
        "shows here before the sweeper's BATCH_STUCK_AFTER_SECONDS.",
        None,
    ),
}


class _Snapshot(Collector):
    """The metrics of one collect_metrics call as Prometheus metric families."""

    def __init__(self, metrics: dict[str, float | dict[str, float]]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for name, value in self.metrics.items():
            kind, help_text, label = _DESCRIBED[name]
            metric = f"hematovision_{name}"
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(metric, help_text, labels=[label] if label else None)
            else:
                family = GaugeMetricFamily(metric, help_text, labels=[label] if label else None)
            if isinstance(value, dict):
                for key, number in value.items():
                    family.add_metric([key], number)
            else:
                family.add_metric([], value)
            yield family


def render_prometheus(metrics: dict[str, float | dict[str, float]]) -> str:
    """Prometheus' text exposition format (prometheus_client's own writer)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(metrics))
    return generate_latest(registry).decode()


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
