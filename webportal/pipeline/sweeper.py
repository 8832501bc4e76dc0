"""The sweeper: batches whose worker died or whose message the broker lost are sent again
(workers.tasks.sweep_batches, every SWEEP_INTERVAL_SECONDS; `manage.py rescue_batches`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from webportal.cases.selectors import delivery_limit_reached, stuck_batches, unclaimed_batches
from webportal.cases.services import send_batch
from webportal.pipeline.batch_job import gave_up, mark_batch_failed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    requeued_stuck: list[int]
    resent_queued: list[int]
    failed: list[int]


def sweep_batches(*, everything: bool = False) -> SweepReport:
    """Rescue batches whose worker died or whose message the broker lost.

    A processing batch with no heartbeat for BATCH_STUCK_AFTER_SECONDS is sent again; a queued
    batch unclaimed for BATCH_RESEND_AFTER_SECONDS has its message sent again. A duplicate
    message is harmless (the claim and the unique constraint see to that), a lost one is not.
    ``everything`` sends every processing and queued batch again whatever its age: only for
    when no worker is running (the embedded default, after its one worker died).
    """
    now = timezone.now()
    stuck_after = 0 if everything else settings.BATCH_STUCK_AFTER_SECONDS
    resend_after = 0 if everything else settings.BATCH_RESEND_AFTER_SECONDS
    requeued: list[int] = []
    resent: list[int] = []
    failed: list[int] = []
    for batch in stuck_batches(now=now, after_seconds=stuck_after).only(
        "id", "priority", "stalled_attempts"
    ):
        if delivery_limit_reached(deliveries=batch.stalled_attempts + 1):  # the resend's
            mark_batch_failed(batch_id=batch.pk, reason=gave_up(batch.stalled_attempts))
            failed.append(batch.pk)
            continue
        send_batch(batch_id=batch.pk, queue=batch.queue)
        requeued.append(batch.pk)
    for batch in unclaimed_batches(now=now, after_seconds=resend_after).only("id", "priority"):
        send_batch(batch_id=batch.pk, queue=batch.queue)
        resent.append(batch.pk)
    if requeued or resent or failed:
        logger.warning("sweep: requeued %s, resent %s, failed %s", requeued, resent, failed)
    return SweepReport(requeued_stuck=requeued, resent_queued=resent, failed=failed)
