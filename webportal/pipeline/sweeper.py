"""The sweeper: shards whose worker died or whose message the broker lost are offered again
(workers.tasks.sweep_batches, every SWEEP_INTERVAL_SECONDS; `manage.py rescue_batches`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from webportal.cases.models import Shard
from webportal.cases.selectors import (
    delivery_limit_reached,
    stuck_shards,
    unclaimed_shards,
    unfinished_batches_without_work,
)
from webportal.cases.services import offer_shard, send_batch
from webportal.pipeline.batch_job import gave_up, mark_batch_failed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    # Batch ids (sorted, each once): a claimed shard re-offered (its worker stopped), a
    # queued shard's message sent again, a batch failed after too many stalled deliveries.
    requeued_stuck: list[int]
    resent_queued: list[int]
    failed: list[int]


def sweep_batches(*, everything: bool = False) -> SweepReport:
    """Rescue shards whose worker died or whose message the broker lost.

    A claimed shard with no heartbeat for BATCH_STUCK_AFTER_SECONDS is queued and offered
    again (a duplicate message is harmless: the claim and the unique constraint see to that,
    a lost one is not); a queued shard unclaimed for BATCH_RESEND_AFTER_SECONDS has its message
    sent again; a batch with every shard done but no finish (its worker died finishing) is
    sent again to be finished. A shard whose next delivery would pass
    BATCH_MAX_STALLED_ATTEMPTS without progress fails its batch. ``everything`` does all of it
    whatever the age: only for when no worker is running (the embedded default, after its one
    worker died).
    """
    now = timezone.now()
    stuck_after = 0 if everything else settings.BATCH_STUCK_AFTER_SECONDS
    resend_after = 0 if everything else settings.BATCH_RESEND_AFTER_SECONDS
    requeued: set[int] = set()
    resent: set[int] = set()
    failed: set[int] = set()
    offered: set[int] = set()
    for shard in stuck_shards(now=now, after_seconds=stuck_after).only(
        "id", "batch_id", "deliveries", "heartbeat_at"
    ):
        if shard.batch_id in failed:
            continue
        if delivery_limit_reached(deliveries=shard.deliveries + 1):  # the resend's
            mark_batch_failed(batch_id=shard.batch_id, reason=gave_up(shard.deliveries))
            failed.add(shard.batch_id)
            continue
        # Only if it is still as found: a worker may have saved a chunk meanwhile.
        if Shard.objects.filter(
            pk=shard.pk, status=Shard.Status.PROCESSING, heartbeat_at=shard.heartbeat_at
        ).update(status=Shard.Status.QUEUED):
            offer_shard(shard_id=shard.pk)
            offered.add(shard.pk)
            requeued.add(shard.batch_id)
    for shard in unclaimed_shards(now=now, after_seconds=resend_after).only("id", "batch_id"):
        if shard.pk in offered or shard.batch_id in failed:
            continue
        offer_shard(shard_id=shard.pk)
        resent.add(shard.batch_id)
    for batch in unfinished_batches_without_work(now=now, after_seconds=stuck_after).only(
        "id", "priority", "status"
    ):
        send_batch(batch_id=batch.pk, queue=batch.queue)
        (resent if batch.status == batch.Status.QUEUED else requeued).add(batch.pk)
    report = SweepReport(
        requeued_stuck=sorted(requeued), resent_queued=sorted(resent), failed=sorted(failed)
    )
    if requeued or resent or failed:
        logger.warning(
            "sweep: requeued %s, resent %s, failed %s",
            report.requeued_stuck,
            report.resent_queued,
            report.failed,
        )
    return report
