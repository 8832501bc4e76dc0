"""Grad-CAM heatmaps, the worker's side (task `explain_cell`): computed with the classifier
the worker process keeps loaded, stored where `heatmaps.cached_heatmap` reads them. Only
worker processes import this module: it brings in PyTorch."""

from __future__ import annotations

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage

from ml.explain import explain_png
from webportal.cases.heatmaps import heatmap_name
from webportal.cases.models import Cell, Prediction
from webportal.pipeline.classifiers import load_classifier


def compute_heatmap(*, cell_id: int) -> str | None:
    """Store the Grad-CAM PNG of the cell's predicted class unless it is there already (so a
    repeated message is harmless); its storage name, or None when there is nothing to explain."""
    cell = Cell.objects.select_related("image__batch__model_version").filter(pk=cell_id).first()
    if cell is None or not cell.image.file:
        return None
    model_version = cell.image.batch.model_version
    prediction = Prediction.objects.filter(cell=cell, model_version=model_version).first()
    if prediction is None:
        return None
    name = heatmap_name(
        cell_id=cell.pk, model_sha256=model_version.checkpoint_sha256, label=prediction.label
    )
    if default_storage.exists(name):
        return name
    with cell.image.file.open("rb") as handle, PILImage.open(handle) as stored:
        picture = stored.convert("RGB")
    if cell.box is not None:
        x, y, width, height = (int(v) for v in cell.box)
        picture = picture.crop((x, y, x + width, y + height))
    png = explain_png(load_classifier(model_version=model_version), picture, prediction.label)
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(png))
    return name
