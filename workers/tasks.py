"""Celery tasks: ids in, one service call, nothing else.

The portal sends these by name (`webportal.celery`) and never imports this module; the worker
imports it at start (the app's `include`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun, worker_process_init
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerUnreachable

from webportal import logs
from webportal.celery import (
    ADAPT_MODEL_TASK,
    ADAPT_QUEUE,
    DELIVER_DUE_LIS_TASK,
    DELIVER_DUE_WEBHOOKS_TASK,
    DELIVER_LIS_TASK,
    DELIVER_WEBHOOK_TASK,
    EXPLAIN_CELL_TASK,
    PROCESS_BATCH_TASK,
    SWEEP_BATCHES_TASK,
    app,
)
from webportal.pipeline import batch_job, classifiers, sweeper
from workers import heartbeat

logger = logging.getLogger(__name__)

# Worth another try later: the database or the broker was briefly unreachable (or SQLite was
# locked by another writer). Anything else is a fault of the batch and is reported on it.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, BrokerUnreachable)


@shared_task(
    name=PROCESS_BATCH_TASK,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=10,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
)
def process_batch(batch_id: int) -> None:
    try:
        batch_job.process_batch(batch_id=batch_id)
    except TRANSIENT_ERRORS:
        # Retried with backoff (autoretry_for); the shard held goes back to the queue now if
        # the database lets it, else the sweeper offers it again once its heartbeat is stale.
        with contextlib.suppress(*TRANSIENT_ERRORS):
            batch_job.release_claimed_shards()
        raise
    except SoftTimeLimitExceeded:
        # What was saved stays saved; the shard goes back to the queue for any worker.
        batch_job.release_claimed_shards()
    except Exception as exc:
        # Anything else (a stored file gone, a bug) fails the batch now with its reason,
        # rather than leaving it "processing" until the sweeper gives up on it: the batch of
        # the shard claimed, which need not be the one the message named.
        failed = batch_job.batch_at_work(default=batch_id)
        logger.exception("batch %s failed", failed)
        batch_job.mark_batch_failed(batch_id=failed, reason=batch_job.failure_reason(exc))


@shared_task(name=SWEEP_BATCHES_TASK, autoretry_for=TRANSIENT_ERRORS, max_retries=3)
def sweep_batches() -> None:
    sweeper.sweep_batches()


@worker_process_init.connect
def load_models_after_fork(**_: object) -> None:
    """Load the models each pool process will use once, after fork (CUDA cannot cross fork).

    A worker consuming only the `adapt` queue classifies nothing: it loads none (the pool
    process inherits the queues its parent selected with -Q)."""
    consumed = set(app.amqp.queues.consume_from)
    if consumed and consumed <= {ADAPT_QUEUE}:
        return
    try:
        classifiers.preload_classifiers()
    except Exception:
        # A worker without its model still starts; the batch that needs it fails with the reason.
        logger.exception("could not preload classifiers")
    heartbeat.report_engine(",".join(classifiers.loaded_engines()))


@shared_task(name=DELIVER_WEBHOOK_TASK)
def deliver_webhook(delivery_id: int) -> None:
    """One try of one new delivery, right after it was committed. Never retried from here: the
    row's next try is in the database (`next_attempt_at`), and the poll below sends it."""
    from webportal.notifications import webhooks

    webhooks.attempt_delivery(delivery_id=delivery_id)


@shared_task(name=DELIVER_DUE_WEBHOOKS_TASK)
def deliver_due_webhooks() -> None:
    """The webhook outbox's poll (Celery beat, every WEBHOOK_POLL_SECONDS): what is due."""
    from webportal.notifications import webhooks

    webhooks.deliver_due()


@shared_task(name=DELIVER_LIS_TASK)
def deliver_lis_message(delivery_id: int) -> None:
    """One try of one new LIS delivery (HL7 over MLLP), right after it was committed."""
    from webportal.notifications import lis

    lis.attempt_delivery(delivery_id=delivery_id)


@shared_task(name=DELIVER_DUE_LIS_TASK)
def deliver_due_lis_messages() -> None:
    """The LIS outbox's poll (Celery beat, every WEBHOOK_POLL_SECONDS): what is due."""
    from webportal.notifications import lis

    lis.deliver_due()


@shared_task(name=EXPLAIN_CELL_TASK, autoretry_for=TRANSIENT_ERRORS, max_retries=3)
def explain_cell(cell_id: int) -> None:
    """The Grad-CAM heatmap of one cell for its page; idempotent (kept once stored)."""
    from webportal.pipeline import explain

    explain.compute_heatmap(cell_id=cell_id)


@shared_task(name=ADAPT_MODEL_TASK)
def adapt_model(job_id: int) -> None:
    """Fine-tune a lab's model on its reviewed cells (the `adapt` queue, a worker of its own).

    Acknowledged on receipt and never retried (webportal.celery's annotations): a fine-tune is
    long, and a repeated message finds the job no longer queued and does nothing. A failure is
    written on the job with its reason by the runner (webportal.pipeline.adaptation)."""
    from webportal.pipeline import adaptation

    try:
        adaptation.run_adaptation(job_id=job_id)
    except Exception:
        logger.exception("adaptation %s failed", job_id)


@task_prerun.connect
def bind_log_context(task: Task[Any, Any], args: tuple[Any, ...] = (), **_: object) -> None:
    """The task's log lines carry the request id it was sent with (else its own id), and a
    batch task's lines its batch and lab."""
    request = task.request
    sent_with = getattr(request, logs.TASK_HEADER, None) or (request.headers or {}).get(
        logs.TASK_HEADER
    )
    logs.request_id.set(str(sent_with or request.id or ""))
    if task.name == PROCESS_BATCH_TASK and args:
        logs.batch_id.set(str(args[0]))
        logs.lab.set(batch_job.lab_slug_of(batch_id=int(args[0])))


@task_postrun.connect
def clear_log_context(**_: object) -> None:
    for var in (logs.request_id, logs.batch_id, logs.lab):
        var.set("")
