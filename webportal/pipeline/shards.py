"""Claiming, finishing and releasing a batch's shards (webportal.cases.models.Shard).

A broker message says only "there is work": the worker that takes it claims the first shard
in the database's order (`selectors.claimable_shards`: STAT, then the lab served least
recently, then the oldest batch) with a conditional UPDATE, so a shard is never held by two
workers at once and the broker's order decides nothing. On PostgreSQL the candidate row is
read `FOR UPDATE SKIP LOCKED` (claimers do not queue on one row); SQLite serialises writers
(IMMEDIATE transactions) anyway. A message that finds nothing to claim does nothing but look
whether its batch is complete and unfinished (a finish that never committed).
"""

from __future__ import annotations

import os
import socket
from functools import cache

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from webportal.cases.models import Batch, Shard
from webportal.cases.selectors import claimable_shards
from webportal.cases.services import plan_shards

# A claim that loses its race to another worker looks again, this many times.
CLAIM_TRIES = 5


@cache
def worker_identity() -> str:
    """Who claims: the host and the process (a prefork pool's child has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_next_shard(*, worker: str | None = None) -> Shard | None:
    """Take the first claimable shard for `worker` (this process by default), or None.

    The shard becomes processing with its claimer, claim time, heartbeat and one more
    delivery; its batch becomes processing (started now, on its first claim).
    """
    worker = worker or worker_identity()
    skip_locked = connection.vendor == "postgresql"
    for _ in range(CLAIM_TRIES):
        with transaction.atomic():
            candidates = claimable_shards()
            if skip_locked:
                candidates = candidates.select_for_update(skip_locked=True, of=("self",))
            found = candidates.values_list("pk", "batch_id").first()
            if found is None:
                return None
            shard_id, batch_id = found
            now = timezone.now()
            claimed = Shard.objects.filter(pk=shard_id, status=Shard.Status.QUEUED).update(
                status=Shard.Status.PROCESSING,
                claimed_by=worker,
                claimed_at=now,
                heartbeat_at=now,
                deliveries=F("deliveries") + 1,
            )
            if not claimed:
                continue  # another worker was first (a database without row locks)
            shard = Shard.objects.get(pk=shard_id)
            Batch.objects.filter(pk=batch_id, status=Batch.Status.QUEUED).update(
                status=Batch.Status.PROCESSING
            )
            Batch.objects.filter(pk=batch_id, started_at__isnull=True).update(started_at=now)
            # The batch's figure for the poison rule and the batch page: the deliveries in a
            # row without progress of its latest claimed shard.
            Batch.objects.filter(pk=batch_id).update(
                heartbeat_at=now, stalled_attempts=shard.deliveries
            )
            return shard
    return None


def complete_shard(*, shard_id: int, batch_id: int) -> bool:
    """Mark a shard done; True when its batch has no shard left (this caller finishes it).

    The batch's row is locked first, so of two last shards finishing at once exactly one sees
    none left (on SQLite the IMMEDIATE transaction serialises them anyway).
    """
    now = timezone.now()
    with transaction.atomic():
        list(Batch.objects.select_for_update().filter(pk=batch_id).values_list("pk", flat=True))
        Shard.objects.filter(pk=shard_id).exclude(status=Shard.Status.DONE).update(
            status=Shard.Status.DONE, finished_at=now, heartbeat_at=now
        )
        return (
            not Shard.objects.filter(batch_id=batch_id).exclude(status=Shard.Status.DONE).exists()
        )


def ensure_shards(*, batch_id: int) -> None:
    """Split a batch queued before batches had shards (or made without an upload)."""
    unfinished = Batch.objects.filter(
        pk=batch_id, status__in=[Batch.Status.QUEUED, Batch.Status.PROCESSING]
    )
    if unfinished.exists() and not Shard.objects.filter(batch_id=batch_id).exists():
        plan_shards(batch_id=batch_id)


def release_shards(*, worker: str | None = None) -> list[tuple[int, str]]:
    """Give back the shards this worker holds (its task's soft time limit was hit): queued
    again, what was saved stays saved. Returns (batch id, queue) per shard to offer again."""
    worker = worker or worker_identity()
    with transaction.atomic():
        held = list(
            Shard.objects.filter(status=Shard.Status.PROCESSING, claimed_by=worker).values_list(
                "pk", "batch_id", "priority"
            )
        )
        Shard.objects.filter(pk__in=[pk for pk, _, _ in held]).update(
            status=Shard.Status.QUEUED, enqueued_at=timezone.now()
        )
    return [
        (batch_id, "stat" if priority == Batch.Priority.STAT else "routine")
        for _, batch_id, priority in held
    ]
