"""Grad-CAM heatmaps for the cell page, computed on first request and cached in storage.

Chosen over a Celery task because the shipped models are small (a forward and a backward pass
of MobileNetV2 on one 224 px cell takes well under a second on a CPU) and the result is cached,
so a cell costs that once. PyTorch is imported here, inside the function, so the web process
loads it only when someone first opens a heatmap, never at start-up.
"""

from __future__ import annotations

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from webportal.cases.models import Cell, Prediction


class ExplainError(Exception):
    """No heatmap can be made for this cell (no prediction, no stored image, no model file)."""


def heatmap_name(*, cell: Cell, model_sha256: str, label: str) -> str:
    return f"heatmaps/{model_sha256[:16]}/{cell.pk}-{label.replace(' ', '_')}.png"


def heatmap_png(*, cell: Cell) -> bytes:
    """The Grad-CAM PNG of the cell's predicted class under its batch's model."""
    image = cell.image
    model_version = image.batch.model_version
    prediction = Prediction.objects.filter(cell=cell, model_version=model_version).first()
    if prediction is None:
        raise ExplainError("This cell has no prediction yet.")
    name = heatmap_name(
        cell=cell, model_sha256=model_version.checkpoint_sha256, label=prediction.label
    )
    if default_storage.exists(name):
        with default_storage.open(name, "rb") as cached:
            return bytes(cached.read())
    if not image.file:
        raise ExplainError("The image of this cell is not stored.")

    from PIL import Image as PILImage

    from ml.explain import explain_png
    from webportal.cases.services import ServiceError, load_classifier

    try:
        classifier = load_classifier(model_version=model_version)
    except ServiceError as exc:
        raise ExplainError(str(exc)) from exc
    with image.file.open("rb") as handle, PILImage.open(handle) as stored:
        picture = stored.convert("RGB")
    if cell.box is not None:
        x, y, width, height = (int(v) for v in cell.box)
        picture = picture.crop((x, y, x + width, y + height))
    png = explain_png(classifier, picture, prediction.label)
    if not default_storage.exists(name):
        default_storage.save(name, ContentFile(png))
    return png
