"""Two real worker processes on one sharded batch: each classifies part of it, and the batch is
finished once (one report, one prediction per cell, counted done once)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import LazySettings

from ml.testing import make_tiny_checkpoint
from tests.conftest import TINY_CLASSES, noisy_jpeg_bytes
from tests.services import celery_worker, wait_until
from webportal.cases import services
from webportal.cases.models import (
    Batch,
    Cell,
    Image,
    MetricCounter,
    ModelVersion,
    Prediction,
    Shard,
    WorkerHeartbeat,
)
from webportal.celery import use_broker
from webportal.ops import monitoring
from webportal.pipeline import registration

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def slow_model(db: None, tmp_path: Path) -> ModelVersion:
    """Random weights at 160 px on the eager engine: a shard takes long enough that the
    second worker is busy before the first has taken every shard."""
    path = make_tiny_checkpoint(tmp_path / "slow.pt", TINY_CLASSES, input_size=160)
    return registration.register_model(checkpoint_path=path, name="slow")


def test_two_workers_each_classify_part_of_one_batch_which_is_finished_once(
    slow_model: ModelVersion, case, tmp_path: Path, settings: LazySettings
) -> None:
    folder = tmp_path / "broker"
    use_broker("filesystem://", folder)  # this process sends where the workers listen
    settings.BATCH_SHARD_IMAGES = 12  # split here, at the upload: ten shards
    env = {"INFERENCE_CHUNK_SIZE": "4", "INFERENCE_ENGINE": "eager"}
    kwargs = {"broker_url": "filesystem://", "broker_folder": folder, "extra_env": env}
    with (
        celery_worker(log_path=tmp_path / "one.log", **kwargs),  # type: ignore[arg-type]
        celery_worker(log_path=tmp_path / "two.log", **kwargs),  # type: ignore[arg-type]
    ):
        # Both pool processes have loaded the model before the batch arrives.
        wait_until(
            lambda: WorkerHeartbeat.objects.exclude(engine="").count() == 2,
            timeout=120,
            what="both workers ready",
        )
        files = [(f"c{i}.jpg", io.BytesIO(noisy_jpeg_bytes((96, 96)))) for i in range(120)]
        batch = services.submit_batch(case=case, created_by=None, files=files)
        wait_until(
            lambda: Batch.objects.get(pk=batch.pk).is_finished, timeout=240, what="the batch"
        )
    logs = (tmp_path / "one.log").read_text() + (tmp_path / "two.log").read_text()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE, logs[-3000:]

    shards = list(Shard.objects.filter(batch=batch))
    assert len(shards) == 10
    assert {shard.status for shard in shards} == {Shard.Status.DONE}
    claimers = {shard.claimed_by for shard in shards}
    assert len(claimers) == 2, claimers  # both workers' identities among the shards

    cells = Cell.objects.filter(image__batch=batch, image__status=Image.Status.OK)
    assert cells.count() == 120
    for cell in cells:
        assert Prediction.objects.filter(cell=cell, model_version=slow_model).count() == 1
    assert batch.processed_images == 120
    assert batch.reports.count() == 1
    assert batch.reports.get().total_cells == 120
    counted = dict(MetricCounter.objects.values_list("name", "value"))
    assert counted[monitoring.BATCHES_DONE] == 1  # finished once
    assert counted[monitoring.IMAGES_CLASSIFIED] == 120
