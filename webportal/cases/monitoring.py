"""What a lab operator watches: health of the database and broker, queue and throughput."""

from __future__ import annotations

import logging
import statistics
from datetime import timedelta

from django.db import connection
from django.db.models import Count, F, Sum
from django.utils import timezone

from webportal.cases.models import Batch, Prediction

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW = timedelta(minutes=5)
LATENCY_WINDOW = timedelta(hours=1)


def check_health() -> dict[str, bool]:
    """Whether the database and the broker answer now (no detail: the endpoint is public)."""
    from webportal.celery import app

    health = {"database": False, "broker": False}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        health["database"] = True
    except Exception:
        logger.exception("health: database")
    try:
        with app.connection_for_write() as broker:
            broker.ensure_connection(max_retries=1, timeout=3)
        health["broker"] = True
    except Exception:
        logger.exception("health: broker")
    return health


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
        "predictions_total": float(Prediction.objects.count()),
        "images_per_second": recent / THROUGHPUT_WINDOW.total_seconds(),
        "batch_latency_seconds_p50": _quantile(latencies, 0.5),
        "batch_latency_seconds_p95": _quantile(latencies, 0.95),
    }


def render_prometheus(metrics: dict[str, float | dict[str, float]]) -> str:
    labels = {"batches": "status", "queue_depth_images": "queue"}
    lines = []
    for name, value in metrics.items():
        metric = f"hematovision_{name}"
        lines.append(f"# TYPE {metric} {'counter' if name.endswith('_total') else 'gauge'}")
        if isinstance(value, dict):
            lines += [f'{metric}{{{labels[name]}="{key}"}} {v:g}' for key, v in value.items()]
        else:
            lines.append(f"{metric} {value:g}")
    return "\n".join(lines) + "\n"


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
