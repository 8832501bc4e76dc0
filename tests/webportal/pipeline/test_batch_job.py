"""The job's bookkeeping without a worker: shards, the sweeper, poison shards, cancelling."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import LazySettings
from django.utils import timezone

from tests.conftest import noisy_jpeg_bytes
from webportal.cases import services
from webportal.cases.models import Batch, ModelVersion, Prediction, Shard
from webportal.pipeline import batch_job, shards, sweeper

pytestmark = pytest.mark.django_db


def _submit(case, count: int, priority: str = "routine") -> Batch:
    files = [(f"c{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(count)]
    return services.submit_batch(case=case, created_by=None, files=files, priority=priority)


def _messages() -> list[Path]:
    from webportal.celery import app

    folder = Path(app.conf.broker_transport_options["data_folder_out"])
    return sorted(folder.glob("*"))


def _shards(batch: Batch) -> list[Shard]:
    return list(Shard.objects.filter(batch=batch).order_by("first_image_id"))


def _age(batch: Batch, **fields: Any) -> None:
    """Set fields of every shard of the batch (a stale heartbeat, an old message...)."""
    Shard.objects.filter(batch=batch).update(**fields)


def test_a_batch_is_split_into_shards_of_its_accepted_images_in_upload_order(
    tiny_model: ModelVersion, case, settings: LazySettings, django_capture_on_commit_callbacks
) -> None:
    settings.BATCH_SHARD_IMAGES = 2
    with django_capture_on_commit_callbacks(execute=True):
        batch = _submit(case, count=5)
    shards = _shards(batch)
    ids = list(batch.images.order_by("id").values_list("id", flat=True))
    assert [(s.first_image_id, s.last_image_id, s.images) for s in shards] == [
        (ids[0], ids[1], 2),
        (ids[2], ids[3], 2),
        (ids[4], ids[4], 1),
    ]
    assert {(s.lab_id, s.priority, s.status) for s in shards} == {
        (case.lab_id, "routine", Shard.Status.QUEUED)
    }
    assert len(_messages()) == 3  # one message per shard, sent after commit
    services.plan_shards(batch_id=batch.pk)  # planned once
    assert len(_shards(batch)) == 3


def test_each_delivery_works_one_shard_and_the_last_one_finishes_the_batch(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    settings.BATCH_SHARD_IMAGES = 2
    batch = _submit(case, count=5)
    first = batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert (first.status, first.classified) == (Batch.Status.PROCESSING, 2)
    assert (batch.status, batch.processed_images) == (Batch.Status.PROCESSING, 2)
    assert batch.reports.count() == 0
    assert [s.status for s in _shards(batch)] == ["done", "queued", "queued"]
    assert _shards(batch)[0].claimed_by == shards.worker_identity()
    batch_job.process_batch(batch_id=batch.pk)
    last = batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert (last.status, last.classified) == (Batch.Status.DONE, 1)
    assert (batch.status, batch.processed_images) == (Batch.Status.DONE, 5)
    assert batch.reports.count() == 1
    assert Prediction.objects.filter(cell__image__batch=batch).count() == 5
    spare = batch_job.process_batch(batch_id=batch.pk)  # a duplicate message: nothing to do
    assert (spare.status, spare.classified) == (Batch.Status.DONE, 0)
    assert batch.reports.count() == 1


def test_a_batch_whose_last_shard_finished_without_its_finish_is_finished_by_a_message(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    batch = _submit(case, count=2)
    shard = shards.claim_next_shard(worker="dead:1")
    assert shard is not None
    batch_job._finish_if_complete(batch_id=batch.pk)  # a shard is still open: nothing
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.PROCESSING
    # The dead worker classified everything and marked its shard done, then died.
    Shard.objects.filter(pk=shard.pk).update(status=Shard.Status.DONE)
    Batch.objects.filter(pk=batch.pk).update(heartbeat_at=timezone.now() - timedelta(days=1))
    assert sweeper.sweep_batches().requeued_stuck == [batch.pk]
    outcome = batch_job.process_batch(batch_id=batch.pk)
    assert outcome.status == Batch.Status.DONE
    assert Batch.objects.get(pk=batch.pk).reports.count() == 1


def test_the_sweeper_reoffers_a_shard_whose_worker_stopped(
    tiny_model: ModelVersion, case, settings: LazySettings, tmp_path: Path
) -> None:
    batch = _submit(case, count=1, priority="stat")
    for message in _messages():
        message.unlink()
    assert shards.claim_next_shard(worker="dead:1") is not None
    stale = timezone.now() - timedelta(seconds=settings.BATCH_STUCK_AFTER_SECONDS + 1)
    _age(batch, heartbeat_at=stale)
    report = sweeper.sweep_batches()
    assert report.requeued_stuck == [batch.pk]
    (shard,) = _shards(batch)
    assert shard.status == Shard.Status.QUEUED
    assert len(_messages()) == 1
    assert b'"stat"' in _messages()[0].read_bytes()  # back on its own queue
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE


def test_the_sweeper_resends_a_queued_shard_the_broker_lost(
    tiny_model: ModelVersion, case, settings: LazySettings, tmp_path: Path
) -> None:
    batch = _submit(case, count=1)
    fresh = _submit(case, count=1)
    old = timezone.now() - timedelta(seconds=settings.BATCH_RESEND_AFTER_SECONDS + 1)
    _age(batch, enqueued_at=old)
    report = sweeper.sweep_batches()
    assert report.resent_queued == [batch.pk]
    assert report.requeued_stuck == []
    assert fresh.pk not in report.resent_queued  # its shard was made just now


def test_with_no_worker_left_every_unfinished_shard_is_offered_again_at_once(
    tiny_model: ModelVersion, case
) -> None:
    held = _submit(case, count=1)
    waiting = _submit(case, count=1)
    finished = _submit(case, count=1)
    assert shards.claim_next_shard(worker="dead:1") is not None  # held's shard, the oldest
    Batch.objects.filter(pk=finished.pk).update(status=Batch.Status.DONE)
    for message in _messages():
        message.unlink()  # the filesystem broker deleted them when the dead worker fetched them

    assert sweeper.sweep_batches() == sweeper.SweepReport([], [], [])  # too fresh
    report = sweeper.sweep_batches(everything=True)

    assert (report.requeued_stuck, report.resent_queued) == ([held.pk], [waiting.pk])
    assert len(_messages()) == 2
    assert _shards(held)[0].status == Shard.Status.QUEUED


def test_the_sweeper_fails_a_batch_whose_shard_keeps_stopping_its_worker(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    batch = _submit(case, count=1)
    stale = timezone.now() - timedelta(seconds=settings.BATCH_STUCK_AFTER_SECONDS + 1)
    _age(
        batch,
        status=Shard.Status.PROCESSING,
        heartbeat_at=stale,
        deliveries=settings.BATCH_MAX_STALLED_ATTEMPTS,
    )
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.PROCESSING)
    report = sweeper.sweep_batches()
    batch.refresh_from_db()
    assert report.failed == [batch.pk]
    assert batch.status == Batch.Status.FAILED
    assert "no progress" in batch.error


def test_a_delivery_after_too_many_stalled_ones_fails_the_batch_with_the_reason(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    batch = _submit(case, count=1)
    _age(batch, deliveries=settings.BATCH_MAX_STALLED_ATTEMPTS)
    outcome = batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert outcome.status == Batch.Status.FAILED
    assert "Gave up" in batch.error


def test_progress_resets_the_stalled_count(tiny_model: ModelVersion, case) -> None:
    batch = _submit(case, count=2)
    _age(batch, deliveries=3)
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    assert batch.stalled_attempts == 0
    assert _shards(batch)[0].deliveries == 0


def test_a_worker_past_its_time_limit_gives_its_shard_back(tiny_model: ModelVersion, case) -> None:
    batch = _submit(case, count=1)
    for message in _messages():
        message.unlink()
    assert shards.claim_next_shard() is not None
    batch_job.release_claimed_shards()
    assert _shards(batch)[0].status == Shard.Status.QUEUED
    assert len(_messages()) == 1


def test_finished_and_cancelled_batches_are_never_sent_back_to_work(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    batch = _submit(case, count=1)
    services.cancel_batch(batch_id=batch.pk)
    stale = timezone.now() - timedelta(days=1)
    _age(batch, heartbeat_at=stale, enqueued_at=stale)
    Batch.objects.filter(pk=batch.pk).update(heartbeat_at=stale, enqueued_at=stale)
    report = sweeper.sweep_batches()
    assert report == sweeper.SweepReport(requeued_stuck=[], resent_queued=[], failed=[])
    assert batch_job.process_batch(batch_id=batch.pk).status == Batch.Status.CANCELLED
    assert _shards(batch)[0].status == Shard.Status.QUEUED  # never claimed


def test_cancelling_stops_the_remaining_shards(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    settings.BATCH_SHARD_IMAGES = 2
    batch = _submit(case, count=6)
    batch_job.process_batch(batch_id=batch.pk)
    services.cancel_batch(batch_id=batch.pk)
    for _ in range(3):
        assert batch_job.process_batch(batch_id=batch.pk).classified == 0
    assert Prediction.objects.filter(cell__image__batch=batch).count() == 2
    assert [s.status for s in _shards(batch)] == ["done", "queued", "queued"]


@pytest.mark.parametrize("total", [0, 1, 5, 29, 60, 200, 512])
@pytest.mark.parametrize("size", [1, 2, 32, 256])
def test_chunks_cover_the_work_once_and_are_small_at_both_ends(total: int, size: int) -> None:
    sizes = batch_job.chunk_sizes(total, size)
    assert sum(sizes) == total
    assert all(1 <= s <= size for s in sizes)
    if total >= 4 * size:  # long enough for the full ramp at both ends
        assert sizes[0] == max(1, size // 8)
        assert sizes[-1] == max(1, size // 8)
        assert size in sizes


def test_progress_counts_images_chunk_by_chunk_without_recounting_the_batch(
    tiny_model: ModelVersion, case, settings: LazySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 2
    batch = _submit(case, count=7)
    seen: list[int] = []
    counts: list[int] = []
    save, count = batch_job._save_predictions, batch_job._images_done

    def saving(**kwargs: Any) -> None:
        save(**kwargs)
        seen.append(Batch.objects.get(pk=batch.pk).processed_images)

    def counting(**kwargs: Any) -> int:
        counts.append(count(**kwargs))
        return counts[-1]

    monkeypatch.setattr(batch_job, "_save_predictions", saving)
    monkeypatch.setattr(batch_job, "_images_done", counting)
    batch_job.process_batch(batch_id=batch.pk)

    sizes = batch_job.chunk_sizes(7, 2)
    assert seen == [sum(sizes[: i + 1]) for i in range(len(sizes))]
    batch.refresh_from_db()
    assert (batch.status, batch.processed_images) == (Batch.Status.DONE, 7)
    assert counts == [7]  # the whole batch counted once, at the end, not per chunk


def test_an_error_fails_the_batch_of_the_shard_claimed_not_the_one_the_message_named(
    tiny_model: ModelVersion, case, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import tasks

    older = _submit(case, count=1)
    named = _submit(case, count=1)  # its message; the database gives the older batch's shard

    def broken(**_: Any) -> None:
        raise ValueError("a stored file is gone")

    monkeypatch.setattr(batch_job, "load_classifier", broken)
    tasks.process_batch(named.pk)  # the task, run in this process
    older.refresh_from_db()
    named.refresh_from_db()
    assert older.status == Batch.Status.FAILED
    assert "a stored file is gone" in older.error
    assert named.status == Batch.Status.QUEUED  # untouched: its shard is still to claim
