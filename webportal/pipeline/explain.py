"""Grad-CAM heatmaps, the worker's side (task `explain_cell`): computed with the classifier
the worker process keeps loaded, stored where `heatmaps.cached_heatmap` reads them. Only
worker processes import this module: it brings in PyTorch."""

from __future__ import annotations

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from ml.explain import explain_png
from webportal.cases.heatmaps import heatmap_name
from webportal.cases.models import Cell, Prediction
from webportal.pipeline.classifiers import load_classifier
from webportal.pipeline.pixels import open_cell


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
    classifier = load_classifier(model_version=model_version)
    # The pixels the classifier read (a located cell: the locator's square around its box, as
    # the cell page shows it), so the map lies over what the model saw and the page shows.
    picture, fitted = open_cell(cell, geometry=classifier.geometry)
    png = explain_png(classifier, picture, prediction.label, fitted=fitted)
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(png))
    return name
