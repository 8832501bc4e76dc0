"""A batch of whole fields through a real Celery worker process: one Cell per white cell."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import LazySettings
from PIL import Image as PILImage

from ml.locate import locate
from tests.services import celery_worker, wait_until
from webportal.cases import services
from webportal.cases.models import Batch, Cell, Image, ModelVersion, Prediction
from webportal.celery import use_broker

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

FIELDS = Path(__file__).resolve().parents[2] / "samples" / "fields"


def test_a_real_worker_gives_one_cell_per_white_cell_with_its_box(
    tiny_model: ModelVersion, case, tmp_path: Path, settings: LazySettings
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 2
    folder = tmp_path / "broker"
    use_broker("filesystem://", folder)
    names = sorted(p.name for p in FIELDS.glob("*.jpg"))
    expected = {}
    for name in names:
        with PILImage.open(FIELDS / name) as img:
            expected[name] = sorted(list(c.xywh) for c in locate(img.convert("RGB")))
    try:
        with celery_worker(
            broker_url="filesystem://", broker_folder=folder, log_path=tmp_path / "worker.log"
        ):
            batch = services.submit_batch(
                case=case,
                created_by=None,
                files=[(name, io.BytesIO((FIELDS / name).read_bytes())) for name in names],
            )
            wait_until(
                lambda: Batch.objects.get(pk=batch.pk).is_finished,
                timeout=180,
                what="the batch of fields to finish",
            )
    finally:
        use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)
    batch.refresh_from_db()
    log = (tmp_path / "worker.log").read_text()
    assert batch.status == Batch.Status.DONE, f"{batch.error}\n{log}"
    assert batch.processed_images == batch.total_images == len(names)
    for image in batch.images.all():
        assert image.kind == Image.Kind.FIELD
        boxes = sorted(list(c.box or []) for c in image.cells.all())
        assert boxes == expected[image.original_name]
        assert image.white_cells == len(boxes)
    cells = Cell.objects.filter(image__batch=batch)
    assert cells.count() == sum(len(b) for b in expected.values())
    assert Prediction.objects.filter(cell__in=cells, model_version=tiny_model).count() == (
        cells.count()
    )
    assert batch.reports.get().total_cells == cells.count()
