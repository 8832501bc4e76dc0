"""The worker's heatmap (`webportal.pipeline.explain`): drawn over the pixels the classifier
read, which are the pixels the cell page shows."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from ml.explain import explain_png
from ml.locate import crop_cell
from tests.conftest import noisy_jpeg_bytes
from webportal.cases import services
from webportal.cases.heatmaps import HEATMAP_METHOD
from webportal.cases.models import Cell, ModelVersion, Prediction
from webportal.pipeline import batch_job, explain
from webportal.pipeline.classifiers import load_classifier

pytestmark = pytest.mark.django_db


def _stored_png(name: str) -> np.ndarray:
    with default_storage.open(name, "rb") as handle, PILImage.open(handle) as png:
        return np.asarray(png.convert("RGB"))


def _png(data: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(data)) as png:
        return np.asarray(png.convert("RGB"))


def test_a_located_cells_heatmap_is_drawn_over_the_locators_square_not_the_bare_box(
    tiny_model: ModelVersion, case
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("f.jpg", io.BytesIO(noisy_jpeg_bytes((160, 120))))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    cell = Cell.objects.select_related("image").get(image__batch=batch)
    # A box drawn by a reviewer (x, y, width, height), off centre and not square.
    cell.box = [20, 30, 40, 24]
    cell.save(update_fields=["box"])
    Prediction.objects.filter(cell=cell).update(label=tiny_model.classes[1])

    name = explain.compute_heatmap(cell_id=cell.pk)
    assert name is not None
    assert f"/v{HEATMAP_METHOD}/" in name
    classifier = load_classifier(model_version=tiny_model)
    with cell.image.file.open("rb") as handle, PILImage.open(handle) as stored:
        field = stored.convert("RGB")
    label = tiny_model.classes[1]
    seen = crop_cell(field, (20, 30, 60, 54))  # what the batch job classified, and the page shows
    assert np.array_equal(_stored_png(name), _png(explain_png(classifier, seen, label)))
    bare_box = field.crop((20, 30, 60, 54))  # what the heatmap used to be drawn over
    assert not np.array_equal(_stored_png(name), _png(explain_png(classifier, bare_box, label)))


def test_a_single_cells_heatmap_is_drawn_over_its_copy_fitted_at_upload(
    tiny_model: ModelVersion, case
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("c.jpg", io.BytesIO(noisy_jpeg_bytes((64, 48))))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    cell = Cell.objects.select_related("image").get(image__batch=batch)
    label = Prediction.objects.get(cell=cell).label

    name = explain.compute_heatmap(cell_id=cell.pk)
    assert name is not None
    classifier = load_classifier(model_version=tiny_model)
    with cell.image.model_input.open("rb") as handle, PILImage.open(handle) as stored:
        fitted = stored.convert("RGB")  # the page's picture of the cell (`cell_crop`)
    assert np.array_equal(
        _stored_png(name), _png(explain_png(classifier, fitted, label, fitted=True))
    )
