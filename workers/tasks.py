"""Celery tasks: ids in, one service call, nothing else."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_process_init

logger = logging.getLogger(__name__)


@shared_task(name="workers.tasks.process_batch")
def process_batch(batch_id: int) -> None:
    from webportal.cases import services

    try:
        services.process_batch(batch_id=batch_id)
    except services.ServiceError as exc:
        logger.error("batch %s failed: %s", batch_id, exc)
        services.mark_batch_failed(batch_id=batch_id, reason=str(exc))


@worker_process_init.connect
def load_models_after_fork(**_: object) -> None:
    """Load the models each pool process will use once, after fork (CUDA cannot cross fork)."""
    from webportal.cases import services

    try:
        services.preload_classifiers()
    except Exception:
        # A worker without its model still starts; the batch that needs it fails with the reason.
        logger.exception("could not preload classifiers")
