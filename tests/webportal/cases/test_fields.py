"""Whole fields in the job: located by the worker's code, one Cell per white cell with its box."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.conf import LazySettings
from django.test import Client
from django.urls import reverse
from PIL import Image as PILImage

from ml.locate import locate
from tests.conftest import noisy_jpeg_bytes
from webportal.cases import selectors, services
from webportal.cases.models import Batch, Cell, Image, ModelVersion, Prediction, Shard
from webportal.pipeline import batch_job

pytestmark = pytest.mark.django_db

FIELDS = Path(__file__).resolve().parents[3] / "samples" / "fields"
SAMPLES = [
    "BloodImage_00000.jpg",
    "BloodImage_00031.jpg",
    "BloodImage_00044.jpg",
    "BloodImage_00020-top.jpg",
]


def field_files(names=SAMPLES):
    return [(name, io.BytesIO((FIELDS / name).read_bytes())) for name in names]


def expected_boxes(name: str) -> list[list[int]]:
    """What ml.locate finds in the sample, as the portal stores it: (x, y, width, height)."""
    with PILImage.open(FIELDS / name) as img:
        return sorted(list(cell.xywh) for cell in locate(img.convert("RGB")))


def test_a_field_sized_upload_is_a_field_without_cells_until_the_worker_locates_them(
    tiny_model: ModelVersion, case
) -> None:
    files = [*field_files(["BloodImage_00000.jpg"]), ("small.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    batch = services.submit_batch(case=case, created_by=None, files=files)
    kinds = dict(batch.images.values_list("original_name", "kind"))
    assert kinds == {"BloodImage_00000.jpg": Image.Kind.FIELD, "small.jpg": Image.Kind.CELL}
    assert Cell.objects.filter(image__batch=batch, image__kind=Image.Kind.FIELD).count() == 0
    assert Cell.objects.filter(image__batch=batch, image__kind=Image.Kind.CELL).count() == 1


def test_the_job_makes_one_cell_per_white_cell_with_its_box_and_classifies_each(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 2  # fields and their cells spread over several chunks
    batch = services.submit_batch(case=case, created_by=None, files=field_files())
    outcome = batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    assert batch.processed_images == batch.total_images == len(SAMPLES)
    total = 0
    for image in batch.images.all():
        boxes = expected_boxes(image.original_name)
        cells = list(image.cells.all())
        assert sorted(list(cell.box or []) for cell in cells) == boxes
        assert all(cell.origin == Cell.Origin.LOCATED for cell in cells)
        assert image.white_cells == len(boxes)
        assert image.located_at is not None
        total += len(boxes)
    assert outcome.classified == total
    predictions = Prediction.objects.filter(cell__image__batch=batch, model_version=tiny_model)
    assert predictions.count() == total
    assert batch.reports.get().total_cells == total


def test_a_field_without_a_white_cell_is_reported_as_such(
    tiny_model: ModelVersion, case, member, client: Client
) -> None:
    batch = services.submit_batch(case=case, created_by=None, files=field_files(SAMPLES[2:]))
    batch_job.process_batch(batch_id=batch.pk)
    empty = list(selectors.fields_without_white_cells(batch=batch))
    assert [image.original_name for image in empty] == ["BloodImage_00020-top.jpg"]
    client.force_login(member.user)
    page = client.get(reverse("cases:batch_detail", args=[batch.pk])).content.decode()
    assert "Fields without a white cell" in page
    assert "BloodImage_00020-top.jpg" in page


def test_a_redelivered_batch_does_not_locate_a_field_twice(
    tiny_model: ModelVersion, case, settings: LazySettings
) -> None:
    settings.INFERENCE_CHUNK_SIZE = 1
    settings.BATCH_SHARD_IMAGES = 1
    batch = services.submit_batch(case=case, created_by=None, files=field_files(SAMPLES[:2]))
    first = batch_job.process_batch(batch_id=batch.pk)  # the first field's shard
    assert first.status == Batch.Status.PROCESSING
    # The first shard offered again (its worker thought dead): its field is not located twice.
    Shard.objects.filter(batch=batch).update(status=Shard.Status.QUEUED)
    batch_job.process_batch(batch_id=batch.pk)
    batch_job.process_batch(batch_id=batch.pk)
    batch_job.process_batch(batch_id=batch.pk)  # a duplicate message: nothing to claim
    expected = sum(len(expected_boxes(name)) for name in SAMPLES[:2])
    assert Cell.objects.filter(image__batch=batch).count() == expected
    assert Prediction.objects.filter(cell__image__batch=batch).count() == expected


def test_the_batch_can_force_single_cells_or_fields(tiny_model: ModelVersion, case) -> None:
    as_cells = services.submit_batch(
        case=case,
        created_by=None,
        files=field_files(["BloodImage_00000.jpg"]),
        image_kind=Batch.ImageKind.CELL,
    )
    batch_job.process_batch(batch_id=as_cells.pk)
    (cell,) = Cell.objects.filter(image__batch=as_cells)
    assert cell.box is None
    assert cell.image.kind == Image.Kind.CELL

    small = io.BytesIO()
    with PILImage.open(FIELDS / "BloodImage_00000.jpg") as img:
        img.crop((150, 100, 600, 430)).save(small, format="PNG")  # 450x330: a cell by size
    small.seek(0)
    as_fields = services.submit_batch(
        case=case, created_by=None, files=[("part.png", small)], image_kind=Batch.ImageKind.FIELD
    )
    batch_job.process_batch(batch_id=as_fields.pk)
    image = as_fields.images.get()
    assert image.kind == Image.Kind.FIELD
    assert image.white_cells == 1
    assert image.cells.get().box is not None


def test_a_field_sized_close_up_of_one_cell_becomes_a_single_cell(
    tiny_model: ModelVersion, case
) -> None:
    with PILImage.open(FIELDS / "BloodImage_00000.jpg") as img:
        x, y, w, h = locate(img.convert("RGB"))[0].xywh
        close_up = img.crop((x + w // 4, y + h // 4, x + 3 * w // 4, y + 3 * h // 4))
        close_up = close_up.resize((640, 560))
    data = io.BytesIO()
    close_up.save(data, format="PNG")
    data.seek(0)
    batch = services.submit_batch(case=case, created_by=None, files=[("close.png", data)])
    batch_job.process_batch(batch_id=batch.pk)
    image = batch.images.get()
    assert image.kind == Image.Kind.CELL
    assert image.cells.get().box is None
    assert Prediction.objects.filter(cell__image=image).count() == 1


def test_an_unknown_image_kind_is_refused_with_a_message(tiny_model: ModelVersion, case) -> None:
    with pytest.raises(services.ServiceError, match="Unknown image kind"):
        services.submit_batch(
            case=case, created_by=None, files=field_files(SAMPLES[:1]), image_kind="slide"
        )


def test_a_chunk_saved_after_a_racing_delivery_keeps_only_the_fields_it_located_first(
    tiny_model: ModelVersion, case
) -> None:
    from ml.inference import CellPrediction

    batch = services.submit_batch(
        case=case, created_by=None, files=field_files(SAMPLES[:2]), image_kind="field"
    )
    first, second = batch.images.order_by("id")
    # Another delivery located the first field and saved its cell meanwhile.
    Image.objects.filter(pk=first.pk).update(located_at=first.created_at, white_cells=1)
    Cell.objects.create(image=first, box=[1, 2, 3, 4], origin=Cell.Origin.LOCATED)
    located: dict[int, list[batch_job.Box] | None] = {
        first.pk: [(10, 10, 50, 50), (70, 70, 40, 40)],
        second.pk: [(5, 6, 30, 30)],
    }
    guess = CellPrediction(label="a", confidence=0.9, probabilities={"a": 0.9, "b": 0.1})

    Batch.objects.filter(pk=batch.pk).update(processed_images=1)  # the other delivery's field
    batch_job._save_predictions(
        batch_id=batch.pk,
        shard_id=Shard.objects.get(batch=batch).pk,
        model_version=tiny_model,
        units=[first, second],
        located=located,
        predictions=[guess] * 3,
    )

    first.refresh_from_db()
    second.refresh_from_db()
    assert list(first.cells.values_list("box", flat=True)) == [[1, 2, 3, 4]]  # untouched
    assert first.white_cells == 1
    assert list(second.cells.values_list("box", flat=True)) == [[5, 6, 30, 30]]
    assert (second.white_cells, second.kind) == (1, Image.Kind.FIELD)
    assert second.located_at is not None
    saved = Prediction.objects.filter(cell__image__batch=batch)
    assert list(saved.values_list("cell__image_id", flat=True)) == [second.pk]
    batch.refresh_from_db()
    assert batch.processed_images == 2  # only the field this chunk located was added


def test_a_field_is_read_from_its_uncompressed_copy_which_goes_once_it_is_located(
    tiny_model: ModelVersion, case, django_capture_on_commit_callbacks
) -> None:
    import numpy as np
    from django.core.files.storage import default_storage

    batch = services.submit_batch(case=case, created_by=None, files=field_files(SAMPLES[:1]))
    image = batch.images.get()
    assert image.model_input_geometry == services.FIELD_COPY
    name = str(image.model_input.name)
    assert name.endswith(".field.bmp")
    with (
        image.model_input.open("rb") as copy_file,
        PILImage.open(copy_file) as copy,
        image.file.open("rb") as png_file,
        PILImage.open(png_file) as png,
    ):
        assert copy.format == "BMP"
        assert np.array_equal(np.asarray(copy.convert("RGB")), np.asarray(png.convert("RGB")))

    with django_capture_on_commit_callbacks(execute=True):
        batch_job.process_batch(batch_id=batch.pk)

    image.refresh_from_db()
    assert sorted(list(cell.box or []) for cell in image.cells.all()) == expected_boxes(SAMPLES[0])
    assert (image.model_input.name, image.model_input_geometry) == ("", "")
    assert not default_storage.exists(name)


def test_a_field_whose_copy_is_gone_is_read_from_its_png(tiny_model: ModelVersion, case) -> None:
    from django.core.files.storage import default_storage

    batch = services.submit_batch(case=case, created_by=None, files=field_files(SAMPLES[:1]))
    image = batch.images.get()
    default_storage.delete(str(image.model_input.name))  # as a racing delivery that located it
    batch_job.process_batch(batch_id=batch.pk)
    image.refresh_from_db()
    assert sorted(list(cell.box or []) for cell in image.cells.all()) == expected_boxes(SAMPLES[0])


def test_only_fields_up_to_the_size_limit_get_the_uncompressed_copy(
    tiny_model: ModelVersion, case, monkeypatch: pytest.MonkeyPatch
) -> None:
    geometry = f"{tiny_model.input_size}-{tiny_model.resize}"
    as_cells = services.submit_batch(
        case=case, created_by=None, files=field_files(SAMPLES[:1]), image_kind="cell"
    )
    assert as_cells.images.get().model_input_geometry == geometry  # a cell: the fitted copy
    services.cancel_batch(batch_id=as_cells.pk)  # else the next delivery would claim it first
    monkeypatch.setattr(services, "FIELD_COPY_MAX_PIXELS", 640 * 480 - 1)
    too_big = services.submit_batch(case=case, created_by=None, files=field_files(SAMPLES[:1]))
    image = too_big.images.get()
    assert (image.kind, image.model_input_geometry) == (Image.Kind.FIELD, geometry)
    batch_job.process_batch(batch_id=too_big.pk)
    image.refresh_from_db()
    assert sorted(list(cell.box or []) for cell in image.cells.all()) == expected_boxes(SAMPLES[0])
    assert image.model_input_geometry == geometry  # a fitted copy is kept
