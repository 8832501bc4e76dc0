"""The job's bookkeeping without a worker: time slices, the sweeper, poison batches."""

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
from webportal.cases.models import Batch, ModelVersion, Prediction
from webportal.pipeline import batch_job, sweeper

pytestmark = pytest.mark.django_db


def _submit(case, count: int, priority: str = "routine") -> Batch:
    files = [(f"c{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(count)]
    return services.submit_batch(case=case, created_by=None, files=files, priority=priority)


def _messages() -> list[Path]:
    from webportal.celery import app

    folder = Path(app.conf.broker_transport_options["data_folder_out"])
    return sorted(folder.glob("*"))


def test_a_spent_time_slice_saves_its_work_and_queues_the_rest(
    tiny_model: ModelVersion, case, settings: LazySettings, tmp_path: Path
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 2
    batch = _submit(case, count=5)
    first = batch_job.chunk_sizes(5, 2)[0]  # one chunk's work, then the slice is spent
    assert 1 <= first < 5
    outcome = batch_job.process_batch(batch_id=batch.pk, time_budget=0)
    batch.refresh_from_db()
    assert (outcome.classified, outcome.remaining) == (first, 5 - first)
    assert batch.status == Batch.Status.QUEUED  # waiting in the queue again, not "processing"
    assert batch.processed_images == first
    assert len(_messages()) == 1
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    assert Prediction.objects.filter(cell__image__batch=batch).count() == 5


def test_the_sweeper_requeues_a_batch_whose_worker_stopped(
    tiny_model: ModelVersion, case, settings: LazySettings, tmp_path: Path
) -> None:
    batch = _submit(case, count=1, priority="stat")
    stale = timezone.now() - timedelta(seconds=settings.BATCH_STUCK_AFTER_SECONDS + 1)
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.PROCESSING, heartbeat_at=stale, stalled_attempts=1
    )
    report = sweeper.sweep_batches()
    batch.refresh_from_db()
    assert report.requeued_stuck == [batch.pk]
    assert batch.status == Batch.Status.QUEUED
    assert len(_messages()) == 1
    assert b'"stat"' in _messages()[0].read_bytes()  # back on its own queue


def test_the_sweeper_resends_a_queued_batch_the_broker_lost(
    tiny_model: ModelVersion, case, settings: LazySettings, tmp_path: Path
) -> None:
    batch = _submit(case, count=1)
    fresh = _submit(case, count=1)
    old = timezone.now() - timedelta(seconds=settings.BATCH_RESEND_AFTER_SECONDS + 1)
    Batch.objects.filter(pk__in=[batch.pk, fresh.pk]).update(enqueued_at=old)
    Batch.objects.filter(pk=fresh.pk).update(enqueued_at=timezone.now())
    report = sweeper.sweep_batches()
    assert report.resent_queued == [batch.pk]
    assert report.requeued_stuck == []


def test_with_no_worker_left_every_unfinished_batch_is_sent_again_at_once(
    tiny_model: ModelVersion, case
) -> None:
    held = _submit(case, count=1)
    waiting = _submit(case, count=1)
    finished = _submit(case, count=1)
    Batch.objects.filter(pk=held.pk).update(
        status=Batch.Status.PROCESSING, heartbeat_at=timezone.now(), stalled_attempts=1
    )
    Batch.objects.filter(pk=waiting.pk).update(enqueued_at=timezone.now())
    Batch.objects.filter(pk=finished.pk).update(status=Batch.Status.DONE)
    for message in _messages():
        message.unlink()  # the filesystem broker deleted them when the dead worker fetched them

    assert sweeper.sweep_batches() == sweeper.SweepReport([], [], [])  # too fresh
    report = sweeper.sweep_batches(everything=True)

    assert (report.requeued_stuck, report.resent_queued) == ([held.pk], [waiting.pk])
    assert len(_messages()) == 2
    held.refresh_from_db()
    assert held.status == Batch.Status.QUEUED


def test_the_sweeper_fails_a_batch_that_keeps_stopping_its_worker(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    batch = _submit(case, count=1)
    stale = timezone.now() - timedelta(seconds=settings.BATCH_STUCK_AFTER_SECONDS + 1)
    Batch.objects.filter(pk=batch.pk).update(
        status=Batch.Status.PROCESSING,
        heartbeat_at=stale,
        stalled_attempts=settings.BATCH_MAX_STALLED_ATTEMPTS,
    )
    report = sweeper.sweep_batches()
    batch.refresh_from_db()
    assert report.failed == [batch.pk]
    assert batch.status == Batch.Status.FAILED
    assert "no progress" in batch.error


def test_a_delivery_after_too_many_stalled_ones_fails_the_batch_with_the_reason(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    batch = _submit(case, count=1)
    Batch.objects.filter(pk=batch.pk).update(stalled_attempts=settings.BATCH_MAX_STALLED_ATTEMPTS)
    outcome = batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert outcome.status == Batch.Status.FAILED
    assert "Gave up" in batch.error


def test_progress_resets_the_stalled_count(tiny_model: ModelVersion, case) -> None:
    batch = _submit(case, count=2)
    Batch.objects.filter(pk=batch.pk).update(stalled_attempts=3)
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    assert batch.stalled_attempts == 0


def test_finished_and_cancelled_batches_are_never_sent_back_to_work(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    batch = _submit(case, count=1)
    services.cancel_batch(batch_id=batch.pk)
    stale = timezone.now() - timedelta(days=1)
    Batch.objects.filter(pk=batch.pk).update(heartbeat_at=stale, enqueued_at=stale)
    report = sweeper.sweep_batches()
    assert report == sweeper.SweepReport(requeued_stuck=[], resent_queued=[], failed=[])
    assert batch_job.process_batch(batch_id=batch.pk).status == Batch.Status.CANCELLED


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

    def saving(**kwargs: Any) -> int:
        result = save(**kwargs)
        seen.append(Batch.objects.get(pk=batch.pk).processed_images)
        return result

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
    assert counts == [0, 7]  # the whole batch counted at the start and the end, not per chunk
