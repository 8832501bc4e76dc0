"""Celery tasks: ids in, one service call, nothing else."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerUnreachable

logger = logging.getLogger(__name__)

# Worth another try later: the database or the broker was briefly unreachable (or SQLite was
# locked by another writer). Anything else is a fault of the batch and is reported on it.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, BrokerUnreachable)


@shared_task(
    name="workers.tasks.process_batch",
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=10,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
)
def process_batch(batch_id: int) -> None:
    from webportal.cases import processing
    from webportal.cases.models import Batch
    from webportal.cases.services import ServiceError

    try:
        processing.process_batch(batch_id=batch_id)
    except ServiceError as exc:
        logger.error("batch %s failed: %s", batch_id, exc)
        processing.mark_batch_failed(batch_id=batch_id, reason=str(exc))
    except SoftTimeLimitExceeded:
        # What was saved stays saved; the rest goes back to the queue.
        queue = Batch.objects.get(pk=batch_id).queue
        processing.send_batch(batch_id=batch_id, queue=queue)


@shared_task(name="workers.tasks.sweep_batches", autoretry_for=TRANSIENT_ERRORS, max_retries=3)
def sweep_batches() -> None:
    from webportal.cases import processing

    processing.sweep_batches()


@worker_process_init.connect
def load_models_after_fork(**_: object) -> None:
    """Load the models each pool process will use once, after fork (CUDA cannot cross fork)."""
    from webportal.cases import services

    try:
        services.preload_classifiers()
    except Exception:
        # A worker without its model still starts; the batch that needs it fails with the reason.
        logger.exception("could not preload classifiers")


@shared_task(
    name="workers.tasks.deliver_webhook",
    bind=True,
    autoretry_for=TRANSIENT_ERRORS,
    # Above WEBHOOK_MAX_ATTEMPTS: the service, not this count, decides when to give up.
    max_retries=100,
    retry_backoff=2,
    retry_backoff_max=60,
)
def deliver_webhook(self: Task[Any, Any], delivery_id: int) -> None:
    """One try; the service says when to try again (it gives up after WEBHOOK_MAX_ATTEMPTS)."""
    from webportal.api import webhooks

    retry_in = webhooks.attempt_delivery(delivery_id=delivery_id)
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
