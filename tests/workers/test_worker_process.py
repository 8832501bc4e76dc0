"""A real Celery worker process (never eager mode) classifies batches end to end."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis
from django.conf import LazySettings
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from tests.conftest import TINY_CLASSES, noisy_jpeg_bytes
from tests.services import REDIS_URL, celery_worker, require_service, wait_until
from webportal.cases import services
from webportal.cases.models import Batch, Image, ModelVersion, Prediction
from webportal.celery import use_broker
from webportal.reports.differential import NOT_CLASSED, UNIDENTIFIED

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture(params=["filesystem", "redis"])
def broker(
    request: pytest.FixtureRequest, tmp_path: Path, settings: LazySettings
) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "broker"
    if request.param == "redis":
        parsed = urlparse(REDIS_URL)
        require_service("Redis", parsed.hostname or "127.0.0.1", parsed.port or 6379)
        redis.Redis.from_url(REDIS_URL).flushdb()
        url = REDIS_URL
    else:
        url = "filesystem://"
    use_broker(url, folder)
    yield url, folder
    use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)


def _worker(broker: tuple[str, Path], tmp_path: Path, settings: LazySettings):
    return celery_worker(
        broker_url=broker[0], broker_folder=broker[1], log_path=tmp_path / "worker.log"
    )


def _finished(batch_id: int) -> bool:
    return Batch.objects.get(pk=batch_id).is_finished


def test_a_real_worker_classifies_every_image_and_stores_the_differential(
    broker: tuple[str, Path], tiny_model: ModelVersion, case, tmp_path: Path, settings: LazySettings
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 4  # several chunks, several forward passes
    files = [(f"cell-{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(10)]
    with _worker(broker, tmp_path, settings):
        batch = services.submit_batch(case=case, created_by=None, files=files)
        wait_until(lambda: _finished(batch.pk), timeout=120, what="the batch to finish")
    batch.refresh_from_db()
    log = (tmp_path / "worker.log").read_text()
    assert batch.status == Batch.Status.DONE, f"{batch.error}\n{log}"
    assert batch.processed_images == batch.total_images == 10
    predictions = Prediction.objects.filter(cell__image__batch=batch, model_version=tiny_model)
    assert predictions.count() == 10
    for prediction in predictions:
        assert prediction.label in TINY_CLASSES
        assert set(prediction.probabilities) == set(TINY_CLASSES)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    report = batch.reports.get()
    assert report.total_cells == 10
    counted = {row["label"]: row["count"] for row in report.differential}
    assert set(counted) == {*TINY_CLASSES, UNIDENTIFIED, NOT_CLASSED}
    assert sum(counted.values()) == 10
    # Percentages of leukocytes, rounded so that they add up to exactly 100.0.
    assert sum(row["percent"] for row in report.differential if row["group"] == "wbc") == 100.0


def _oversized_png() -> bytes:
    buffer = io.BytesIO()
    # 8000 x 8000 = 64 Mpx, over the 50 Mpx limit, yet a few kB on disk.
    PILImage.new("1", (8000, 8000)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_files_get_reasons_while_the_good_ones_are_classified_through_the_portal(
    tiny_model: ModelVersion, case, member, tmp_path: Path, settings: LazySettings
) -> None:
    broker = ("filesystem://", tmp_path / "broker")
    use_broker(*broker)
    good = [(f"good-{i}.jpg", noisy_jpeg_bytes()) for i in range(4)]
    truncated = noisy_jpeg_bytes((64, 64))
    bad = [
        ("truncated.jpg", truncated[: len(truncated) // 2]),
        ("notes.jpg", b"Patient 12 smear, second slide, see notes.\n"),
        ("huge.png", _oversized_png()),
    ]
    client = Client()
    client.force_login(member.user)
    uploads = []
    for name, content in good + bad:
        handle = io.BytesIO(content)
        handle.name = name
        uploads.append(handle)
    try:
        with _worker(broker, tmp_path, settings):
            response = client.post(
                reverse("cases:case_detail", args=[case.pk]),
                {"images": uploads, "priority": "routine"},
            )
            assert response.status_code == 302, response.content.decode()[:2000]
            batch = Batch.objects.get(case=case)
            wait_until(lambda: _finished(batch.pk), timeout=120, what="the batch to finish")
    finally:
        use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE, batch.error
    assert (batch.total_images, batch.rejected_files) == (4, 3)
    reasons = dict(
        batch.images.filter(status=Image.Status.REJECTED).values_list(
            "original_name", "reject_reason"
        )
    )
    assert set(reasons) == {"truncated.jpg", "notes.jpg", "huge.png"}
    assert (
        "truncated" in reasons["truncated.jpg"].lower()
        or "corrupt" in reasons["truncated.jpg"].lower()
    )
    assert "not an image" in reasons["notes.jpg"].lower()
    assert "64,000,000" in reasons["huge.png"] or "8000" in reasons["huge.png"]
    assert Prediction.objects.filter(cell__image__batch=batch).count() == 4

    page = client.get(reverse("cases:batch_detail", args=[batch.pk])).content.decode()
    for name, reason in reasons.items():
        assert name in page
        assert reason.split(":")[0] in page
    assert "Differential" in page


def test_the_whole_bad_input_corpus_leaves_the_worker_standing_and_the_batch_done(
    tiny_model: ModelVersion, case, tmp_path: Path, settings: LazySettings
) -> None:
    from tests.badfiles import bad_file_corpus, edge_case_corpus

    bad = bad_file_corpus()
    edge = edge_case_corpus()
    files = [(name, io.BytesIO(content)) for name, content, _ in bad]
    files += [(case_.name, io.BytesIO(case_.content)) for case_ in edge]
    broker = ("filesystem://", tmp_path / "broker")
    use_broker(*broker)
    with _worker(broker, tmp_path, settings) as worker:
        # Single cells, declared: the edge cases include a 1 x max-side strip, which detection
        # would rightly take for a whole field without a white cell (no Cell, no prediction).
        batch = services.submit_batch(
            case=case, created_by=None, files=files, image_kind=Batch.ImageKind.CELL
        )
        wait_until(lambda: _finished(batch.pk), timeout=180, what="the batch to finish")
        assert worker.poll() is None, "the worker died"
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE, batch.error
    rejected = batch.images.filter(status=Image.Status.REJECTED)
    assert {image.original_name.split("/")[0] for image in rejected} >= {n for n, _, _ in bad}
    assert all(image.reject_reason.strip() for image in rejected)
    assert batch.total_images == len(edge)
    assert Prediction.objects.filter(cell__image__batch=batch).count() == len(edge)


def test_an_unexpected_error_fails_the_batch_at_once_with_its_message(
    tiny_model: ModelVersion, case, tmp_path: Path, settings: LazySettings
) -> None:
    """A stored file gone missing is no transient fault: the batch fails on the first delivery
    with the error's own words, instead of waiting "processing" for the sweeper to give up."""
    folder = tmp_path / "broker"
    use_broker("filesystem://", folder)
    try:
        files = [(f"cell-{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(3)]
        batch = services.submit_batch(case=case, created_by=None, files=files)
        lost = Image.objects.filter(batch=batch).order_by("id").last()
        assert lost is not None
        for stored in (lost.file, lost.model_input):
            Path(stored.path).unlink()
        with celery_worker(
            broker_url="filesystem://", broker_folder=folder, log_path=tmp_path / "worker.log"
        ):
            wait_until(lambda: _finished(batch.pk), timeout=120, what="the batch to finish")
    finally:
        use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)
    batch.refresh_from_db()
    log = (tmp_path / "worker.log").read_text()
    assert batch.status == Batch.Status.FAILED, log
    assert "FileNotFoundError" in batch.error
    assert Path(str(lost.file.name)).stem in batch.error  # which file
    assert batch.stalled_attempts == 1  # failed on its first delivery, not swept
    assert f"batch {batch.pk} failed" in log
