from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from django.db import IntegrityError
from PIL import Image as PILImage

from ml.testing import make_tiny_checkpoint
from tests.conftest import TINY_CLASSES, noisy_jpeg_bytes
from tests.factories import CaseFactory, LabFactory
from webportal.cases import selectors, services
from webportal.cases.models import Batch, Cell, Image, ModelVersion, Prediction
from webportal.pipeline import batch_job, classifiers, pixels, registration

pytestmark = pytest.mark.django_db


def _submit(case, count: int = 3) -> Batch:
    files = [(f"cell-{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(count)]
    return services.submit_batch(case=case, created_by=None, files=files)


def test_registering_the_same_checkpoint_twice_returns_one_version(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "m.pt", TINY_CLASSES)
    first = registration.register_model(checkpoint_path=path)
    again = registration.register_model(checkpoint_path=path)
    assert first.pk == again.pk
    assert first.classes == TINY_CLASSES
    assert ModelVersion.objects.count() == 1


def test_registering_a_missing_checkpoint_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(services.ServiceError, match="No checkpoint file at"):
        registration.register_model(checkpoint_path=tmp_path / "absent.pt")


def test_a_case_needs_an_accession_number_unique_in_its_lab() -> None:
    lab = LabFactory.create()
    services.create_case(lab=lab, created_by=None, accession_number="A-1")
    with pytest.raises(services.ServiceError, match="already exists"):
        services.create_case(lab=lab, created_by=None, accession_number=" A-1 ")
    # Another lab may use the same number.
    services.create_case(lab=LabFactory.create(), created_by=None, accession_number="A-1")
    with pytest.raises(services.ServiceError, match="required"):
        services.create_case(lab=lab, created_by=None, accession_number="  ")


@pytest.mark.parametrize("typed", ["a-1", "A-1", "  a-1\t", "\u00a0A-1 "])
def test_accession_numbers_differing_only_in_case_or_spaces_are_duplicates(typed: str) -> None:
    lab = LabFactory.create()
    services.create_case(lab=lab, created_by=None, accession_number="A-1")
    with pytest.raises(services.ServiceError, match="already exists"):
        services.create_case(lab=lab, created_by=None, accession_number=typed)


def test_an_accession_number_is_stored_trimmed_with_inner_spaces_collapsed() -> None:
    case = services.create_case(
        lab=LabFactory.create(), created_by=None, accession_number="  h  2026\t 17 "
    )
    assert case.accession_number == "h 2026 17"


def test_the_database_refuses_a_second_accession_number_differing_only_in_case() -> None:
    case = CaseFactory.create(accession_number="HX-9")
    CaseFactory.create(lab=LabFactory.create(), accession_number="hx-9")  # another lab: fine
    with pytest.raises(IntegrityError):
        CaseFactory.create(lab=case.lab, accession_number="hx-9")


def test_an_accession_number_over_100_characters_is_refused_not_cut() -> None:
    lab = LabFactory.create()
    with pytest.raises(services.ServiceError, match=r"at most 100 characters \(this one has 101\)"):
        services.create_case(lab=lab, created_by=None, accession_number="A" * 101)
    assert not lab.cases.exists()


def test_submitting_stores_images_and_cells_and_queues_the_batch(
    tiny_model: ModelVersion, case, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        batch = _submit(case, count=3)
    assert batch.status == Batch.Status.QUEUED
    assert batch.model_version == tiny_model
    assert (batch.total_images, batch.rejected_files) == (3, 0)
    assert Cell.objects.filter(image__batch=batch).count() == 3
    for image in batch.images.all():
        assert str(image.file.name).endswith(".png")
        assert image.original_name.startswith("cell-")
        assert len(image.sha256) == 64
    assert len(callbacks) == 1  # the task is sent after the commit, not before


def test_a_batch_with_no_acceptable_image_fails_with_a_reason_and_is_not_queued(
    tiny_model: ModelVersion, case, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        batch = services.submit_batch(
            case=case, created_by=None, files=[("a.jpg", io.BytesIO(b"not an image"))]
        )
    assert batch.status == Batch.Status.FAILED
    assert "No file" in batch.error
    assert batch.images.get().status == Image.Status.REJECTED
    assert callbacks == []


def test_submitting_without_any_registered_model_explains_how_to_register_one(case) -> None:
    with pytest.raises(services.ServiceError, match="register_model"):
        _submit(case)


def test_processing_writes_one_prediction_per_cell_and_a_report(
    tiny_model: ModelVersion, case
) -> None:
    batch = _submit(case, count=5)
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    assert batch.processed_images == 5
    assert Prediction.objects.filter(cell__image__batch=batch).count() == 5
    assert batch.reports.get().total_cells == 5


def test_processing_again_adds_no_second_prediction(tiny_model: ModelVersion, case) -> None:
    batch = _submit(case, count=3)
    batch_job.process_batch(batch_id=batch.pk)
    # A redelivered message for a batch still marked processing does only what is missing.
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.PROCESSING)
    batch_job.process_batch(batch_id=batch.pk)
    assert Prediction.objects.filter(cell__image__batch=batch).count() == 3


def test_the_database_refuses_a_second_prediction_from_the_same_model(
    tiny_model: ModelVersion, case
) -> None:
    batch = _submit(case, count=1)
    batch_job.process_batch(batch_id=batch.pk)
    prediction = Prediction.objects.get(cell__image__batch=batch)
    with pytest.raises(IntegrityError):
        Prediction.objects.create(
            cell=prediction.cell,
            model_version=tiny_model,
            label="monocyte",
            confidence=0.5,
            probabilities={},
        )


def test_a_cancelled_batch_is_not_processed(tiny_model: ModelVersion, case) -> None:
    batch = _submit(case, count=2)
    assert services.cancel_batch(batch_id=batch.pk) is True
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED
    assert not Prediction.objects.filter(cell__image__batch=batch).exists()
    assert services.cancel_batch(batch_id=batch.pk) is False


def test_a_changed_checkpoint_file_is_refused(tiny_model: ModelVersion, case) -> None:
    classifiers._classifiers.clear()
    Path(tiny_model.checkpoint_path).write_bytes(b"tampered")
    batch = _submit(case, count=1)
    with pytest.raises(services.ServiceError, match="does not match"):
        batch_job.process_batch(batch_id=batch.pk)


def test_users_see_only_cases_of_their_own_labs(member) -> None:
    own = CaseFactory.create(lab=member.lab)
    CaseFactory.create()  # another lab's
    assert list(selectors.cases_visible_to(user=member.user)) == [own]


def test_each_upload_keeps_a_copy_fitted_to_its_model_and_the_worker_reads_it(
    tiny_model: ModelVersion, case
) -> None:
    batch = _submit(case, count=1)
    cell = Cell.objects.select_related("image").get(image__batch=batch)
    image = cell.image
    geometry = f"{tiny_model.input_size}-{tiny_model.resize}"
    assert image.model_input_geometry == geometry
    assert str(image.model_input.name).endswith(f".{geometry}.bmp")

    fitted, is_fitted = pixels.open_cell(cell, geometry=geometry)
    original, is_original_fitted = pixels.open_cell(cell, geometry="999-pad")  # another model
    assert (fitted.size, is_fitted) == ((tiny_model.input_size,) * 2, True)
    assert (original.size, is_original_fitted) == ((image.width, image.height), False)


@pytest.mark.parametrize("resize", ["crop", "pad", "stain"])
def test_predictions_from_the_fitted_copy_equal_those_from_the_original(
    resize: str, case, tmp_path: Path
) -> None:
    path = make_tiny_checkpoint(tmp_path / f"{resize}.pt", TINY_CLASSES, resize=resize)
    model_version = registration.register_model(checkpoint_path=path)
    assert model_version.resize == resize
    case.lab.active_model = model_version
    case.lab.save()
    jpegs = [_smear_jpeg(seed) for seed in range(4)]
    with_copies = services.submit_batch(
        case=case, created_by=None, files=[(f"{i}.jpg", io.BytesIO(b)) for i, b in enumerate(jpegs)]
    )
    without_copies = services.submit_batch(
        case=case, created_by=None, files=[(f"{i}.jpg", io.BytesIO(b)) for i, b in enumerate(jpegs)]
    )
    Image.objects.filter(batch=without_copies).update(model_input="", model_input_geometry="")
    for batch in (with_copies, without_copies):
        batch_job.process_batch(batch_id=batch.pk)

    def probabilities(batch: Batch) -> list[dict[str, float]]:
        rows = Prediction.objects.filter(cell__image__batch=batch).order_by(
            "cell__image__original_name"
        )
        return [row.probabilities for row in rows]

    assert probabilities(with_copies) == probabilities(without_copies)


def test_a_starting_worker_loads_and_warms_up_the_model_labs_use(
    tiny_model: ModelVersion, caplog: pytest.LogCaptureFixture
) -> None:
    classifiers._classifiers.clear()
    with caplog.at_level("INFO", logger="webportal.pipeline.classifiers"):
        classifiers.preload_classifiers()
    assert tiny_model.checkpoint_sha256 in classifiers._classifiers
    assert f"warmed up {tiny_model} with a batch of 32" in caplog.text


def _smear_jpeg(seed: int) -> bytes:
    """A pink 4:3 field with a violet "cell" somewhere in it, and noise: every geometry has work."""
    import random

    from PIL import Image as PILImage
    from PIL import ImageChops, ImageDraw

    rng = random.Random(seed)
    field = PILImage.new("RGB", (80, 60), (230, 170, 180))
    x, y = rng.randrange(5, 50), rng.randrange(5, 30)
    ImageDraw.Draw(field).ellipse((x, y, x + 24, y + 24), fill=(120, 60, 170))
    noise = PILImage.effect_noise((80, 60), 20).convert("RGB")
    field = ImageChops.add(field, noise, scale=1.0, offset=-100)
    buffer = io.BytesIO()
    field.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("wanted", ["auto", "eager", "fused-channels-last"])
def test_a_worker_runs_the_engine_chosen_and_its_answers_are_eagers(
    tiny_model: ModelVersion, settings, wanted: str
) -> None:
    from ml.engine import best_fp32_engine

    settings.INFERENCE_ENGINE = wanted
    classifiers._classifiers.clear()
    classifier = classifiers.load_classifier(model_version=tiny_model)
    assert classifier.engine == (best_fp32_engine() if wanted == "auto" else wanted)
    samples = sorted(classifiers.DEMO_CELLS.glob("*.jpg"))[:6]
    images = [PILImage.open(path).convert("RGB") for path in samples]
    batch = classifier.preprocess(images)
    with torch.inference_mode():
        eager = torch.softmax(classifier.eager(batch), 1)
    got = torch.softmax(classifier.predict_logits(batch) * classifier.temperature, 1)
    assert torch.equal(got.argmax(1), eager.argmax(1))
    assert float((got - eager).abs().max()) < 1e-3
    classifiers._classifiers.clear()


def test_a_labs_storage_quota_refuses_further_images_with_the_reason(
    case, tiny_model: ModelVersion, settings
) -> None:
    picture = noisy_jpeg_bytes()  # the other lab's image below is this one: the same size
    first = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(picture))]
    )
    used = services.lab_storage_used(lab=case.lab)
    assert used == first.images.get().stored_bytes > 0
    settings.LAB_STORAGE_QUOTA_BYTES = used + 10  # room for nothing more
    second = services.submit_batch(
        case=case, created_by=None, files=[("b.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    (image,) = second.images.all()
    assert image.status == Image.Status.REJECTED
    assert "storage quota" in image.reject_reason
    assert services.lab_storage_used(lab=case.lab) == used
    other_lab_case = CaseFactory.create()  # another lab's quota is its own
    third = services.submit_batch(
        case=other_lab_case, created_by=None,
        files=[("c.jpg", io.BytesIO(picture))],
    )  # fmt: skip
    assert third.images.get().status == Image.Status.OK
