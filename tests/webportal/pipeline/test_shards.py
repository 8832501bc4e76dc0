"""The claim order of shards (decided in the database) and the claim's exactly-once."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from tests.factories import BatchFactory, CaseFactory, LabFactory
from webportal.accounts.models import Lab
from webportal.cases.models import Batch, Shard
from webportal.pipeline import shards


def _batch(lab: Lab, *, priority: str = "routine", count: int = 1) -> Batch:
    """A queued batch of `count` one-image shards (image ids need not exist for the claim)."""
    batch = BatchFactory.create(
        case=CaseFactory.create(lab=lab), priority=priority, status=Batch.Status.QUEUED
    )
    Shard.objects.bulk_create(
        Shard(
            batch=batch,
            lab=lab,
            priority=priority,
            first_image_id=1000 * batch.pk + i,
            last_image_id=1000 * batch.pk + i,
            images=1,
        )
        for i in range(count)
    )
    return batch


def _claim_order(worker: str = "w:1") -> list[int]:
    """The batch of each shard claimed, until nothing is left (each claim done at once)."""
    order = []
    while (shard := shards.claim_next_shard(worker=worker)) is not None:
        order.append(shard.batch_id)
        shards.complete_shard(shard_id=shard.pk, batch_id=shard.batch_id)
    return order


@pytest.mark.django_db
def test_a_stat_shard_is_claimed_before_any_routine_one_even_if_younger() -> None:
    lab = LabFactory.create()
    routine = _batch(lab, count=3)
    stat = _batch(LabFactory.create(), priority="stat", count=2)
    assert _claim_order() == [stat.pk, stat.pk, routine.pk, routine.pk, routine.pk]


@pytest.mark.django_db
def test_labs_take_turns_least_recently_served_first() -> None:
    big_lab, small_lab, other_lab = LabFactory.create_batch(3)
    big = _batch(big_lab, count=4)  # uploaded first, and already being worked
    first = shards.claim_next_shard(worker="w:1")
    assert first is not None
    assert first.batch_id == big.pk
    small = _batch(small_lab, count=1)
    other = _batch(other_lab, count=2)
    # The labs never served go first (oldest batch first among them), then the turns go round.
    assert _claim_order() == [small.pk, other.pk, big.pk, other.pk, big.pk, big.pk]


@pytest.mark.django_db
def test_within_a_lab_the_oldest_batch_goes_first_and_its_shards_in_upload_order() -> None:
    lab = LabFactory.create()
    older = _batch(lab, count=2)
    younger = _batch(lab, count=1)
    claimed = []
    while (shard := shards.claim_next_shard(worker="w:1")) is not None:
        claimed.append((shard.batch_id, shard.first_image_id))
    assert [batch for batch, _ in claimed] == [older.pk, older.pk, younger.pk]
    assert claimed[0][1] < claimed[1][1]


@pytest.mark.django_db
def test_a_claim_records_who_and_moves_the_batch_to_processing() -> None:
    batch = _batch(LabFactory.create())
    shard = shards.claim_next_shard(worker="host-a:42")
    assert shard is not None
    assert (shard.status, shard.claimed_by, shard.deliveries) == ("processing", "host-a:42", 1)
    assert shard.claimed_at is not None
    assert shard.heartbeat_at is not None
    batch.refresh_from_db()
    assert batch.status == Batch.Status.PROCESSING
    assert batch.started_at is not None
    assert shards.claim_next_shard(worker="host-b:7") is None  # nothing else to claim


@pytest.mark.django_db
def test_shards_of_cancelled_finished_or_held_batches_are_never_claimed() -> None:
    lab = LabFactory.create()
    for status in (Batch.Status.CANCELLED, Batch.Status.DONE, Batch.Status.HELD):
        Batch.objects.filter(pk=_batch(lab).pk).update(status=status)
    assert shards.claim_next_shard(worker="w:1") is None


@pytest.mark.django_db
def test_only_the_last_shard_to_complete_says_the_batch_is_finished() -> None:
    batch = _batch(LabFactory.create(), count=2)
    one = shards.claim_next_shard(worker="w:1")
    two = shards.claim_next_shard(worker="w:2")
    assert one is not None
    assert two is not None
    assert shards.complete_shard(shard_id=one.pk, batch_id=batch.pk) is False
    assert shards.complete_shard(shard_id=two.pk, batch_id=batch.pk) is True


@pytest.mark.django_db(transaction=True)
def test_two_claimers_at_once_never_take_the_same_shard() -> None:
    lab = LabFactory.create()
    for _ in range(4):
        _batch(lab, count=10)
    total = Shard.objects.count()
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            start.wait()
            while (shard := shards.claim_next_shard(worker=name)) is not None:
                claimed[name].append(shard.pk)
                time.sleep(0.002)  # "works" it: else one thread may take all before the other
        except BaseException as exc:  # reported below: a thread's failure is not a test's
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    both = claimed["a"] + claimed["b"]
    assert sorted(both) == sorted(set(both))  # no shard twice
    assert len(both) == total  # and none left behind
    assert claimed["a"]
    assert claimed["b"]
    holders = dict(Shard.objects.values_list("pk", "claimed_by"))
    assert all(holders[pk] == name for name, pks in claimed.items() for pk in pks)
