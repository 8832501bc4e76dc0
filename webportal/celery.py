"""The Celery app of the project: `celery -A workers worker --loglevel=INFO`.

It lives in the Django project package, as Celery's Django guide has it, so the portal sends
tasks by name through it and never imports `workers/`: the tasks themselves (`workers.tasks`,
thin wrappers around services) are imported by the worker process only (`include`).
Configuration comes from Django settings (the CELERY_ prefix) when the app is first used, never
at import, so the embedded default and scale-out differ only in environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue

from webportal import logs
from webportal.broker import TRANSPORT

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webportal.settings")

# Task names: the portal sends by name (`send_task`), the worker registers these names.
PROCESS_BATCH_TASK = "workers.tasks.process_batch"
SWEEP_BATCHES_TASK = "workers.tasks.sweep_batches"
DELIVER_WEBHOOK_TASK = "workers.tasks.deliver_webhook"
DELIVER_DUE_WEBHOOKS_TASK = "workers.tasks.deliver_due_webhooks"
DELIVER_LIS_TASK = "workers.tasks.deliver_lis_message"
DELIVER_DUE_LIS_TASK = "workers.tasks.deliver_due_lis_messages"
EXPLAIN_CELL_TASK = "workers.tasks.explain_cell"
ADAPT_MODEL_TASK = "workers.tasks.adapt_model"

app = Celery("hematovision", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")


# Classification workers consume `-Q stat,housekeeping,routine`; with Redis, the "priority"
# order strategy always looks at the queues in that order, so a STAT batch overtakes a routine
# backlog.
QUEUES = ("stat", "housekeeping", "routine")
# Fine-tuning a model to a lab (longer than any batch task) has a queue of its own, consumed
# by its own worker (`-Q adapt`), so it never holds up a batch. Name the queues with -Q on
# every worker: a worker started without -Q consumes every declared queue, this one included.
ADAPT_QUEUE = "adapt"


def broker_transport_options(
    broker_url: str, folder: Path, visibility_timeout: int = 720
) -> dict[str, Any]:
    """Options for the broker; the filesystem transport needs its folders to exist."""
    if broker_url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": visibility_timeout, "queue_order_strategy": "priority"}
    if not broker_url.startswith("filesystem://"):
        return {}
    for sub in ("queue", "processed", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        # kombu polls the folder once a second by default: up to a second lost per message.
        "polling_interval": 0.1,
    }


def broker_transport(broker_url: str) -> str | None:
    """The transport class for a broker URL: the atomic filesystem transport for
    `filesystem://` (webportal.broker), else the one the URL's scheme names."""
    if broker_url.startswith("filesystem://"):
        return TRANSPORT
    return None


def use_broker(broker_url: str, folder: Path) -> None:
    """Point this process's producer at a broker; drops pooled connections to the old one."""
    from django.conf import settings

    app.conf.update(
        broker_url=broker_url,
        broker_transport=broker_transport(broker_url),
        broker_transport_options=broker_transport_options(
            broker_url, folder, settings.BROKER_VISIBILITY_TIMEOUT_SECONDS
        ),
    )
    # Drop this app's handles only: kombu's shared pools are keyed by URL and options, so a
    # later use_broker back to the old broker finds its pool intact.
    app._pool = None  # type: ignore[attr-defined]
    app.amqp._producer_pool = None  # type: ignore[attr-defined]


def _defaults() -> dict[str, Any]:
    """The project's configuration, read from Django's settings on the app's first use.

    Defaults in Celery's sense: an explicit `app.conf.update` (use_broker) still wins.
    """
    from django.conf import settings

    return dict(
        broker_transport=broker_transport(settings.CELERY_BROKER_URL),
        broker_transport_options=broker_transport_options(
            settings.CELERY_BROKER_URL,
            settings.CELERY_BROKER_FOLDER,
            settings.BROKER_VISIBILITY_TIMEOUT_SECONDS,
        ),
        broker_connection_retry_on_startup=True,
        task_default_queue="routine",
        # Declared, each with its own exchange and key, so a message lands in exactly one
        # queue; workers name theirs with -Q (classification, or `adapt`).
        task_queues=[
            Queue(name, Exchange(name), routing_key=name) for name in (*QUEUES, ADAPT_QUEUE)
        ],
        task_routes={
            SWEEP_BATCHES_TASK: {"queue": "housekeeping"},
            DELIVER_WEBHOOK_TASK: {"queue": "housekeeping"},
            DELIVER_DUE_WEBHOOKS_TASK: {"queue": "housekeeping"},
            DELIVER_LIS_TASK: {"queue": "housekeeping"},
            DELIVER_DUE_LIS_TASK: {"queue": "housekeeping"},
            ADAPT_MODEL_TASK: {"queue": ADAPT_QUEUE},
        },
        beat_schedule={
            "sweep-batches": {
                "task": SWEEP_BATCHES_TASK,
                "schedule": float(settings.SWEEP_INTERVAL_SECONDS),
            },
            # The webhook outbox: every delivery that is due, from the database.
            "deliver-due-webhooks": {
                "task": DELIVER_DUE_WEBHOOKS_TASK,
                "schedule": float(settings.WEBHOOK_POLL_SECONDS),
                # A poll that waited longer than the next one is worth nothing: drop it.
                "options": {"expires": float(settings.WEBHOOK_POLL_SECONDS)},
            },
            # The LIS outbox (HL7 over MLLP), on the same schedule.
            "deliver-due-lis-messages": {
                "task": DELIVER_DUE_LIS_TASK,
                "schedule": float(settings.WEBHOOK_POLL_SECONDS),
                "options": {"expires": float(settings.WEBHOOK_POLL_SECONDS)},
            },
        },
        # A fine-tune outlasts a batch's time limits: its own limits, and its message is
        # acknowledged on receipt (no Redis redelivery to a second worker while the first
        # still trains); a job whose worker died is found by its stale heartbeat instead
        # (webportal.adaptation.services.start_adaptation).
        task_annotations={
            ADAPT_MODEL_TASK: {
                "time_limit": settings.ADAPT_TIME_LIMIT_SECONDS,
                "soft_time_limit": max(1, settings.ADAPT_TIME_LIMIT_SECONDS - 60),
                "acks_late": False,
            }
        },
        task_soft_time_limit=settings.TASK_SOFT_TIME_LIMIT_SECONDS,
        task_time_limit=settings.TASK_TIME_LIMIT_SECONDS,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # The database is where results live; Celery results would be a second copy.
        task_ignore_result=True,
        # A worker that dies mid-batch leaves the message to be delivered again; the
        # batch service only does what is still missing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
    )


app.add_defaults(_defaults)


@before_task_publish.connect
def carry_request_id(headers: dict[str, Any] | None = None, **_: object) -> None:
    """The request (or task) that sends a task hands its id on: the task's log lines carry it."""
    current = logs.request_id.get()
    if current and headers is not None:
        headers.setdefault(logs.TASK_HEADER, current)
