"""Grad-CAM heatmaps for the cell page, the portal's side: the cached PNG, or a request to a
worker to make it. PyTorch stays out of the portal's process: the worker computes the heatmap
(`webportal.pipeline.explain.compute_heatmap`, task `explain_cell`) and stores it where this
reads it."""

from __future__ import annotations

from django.core.cache import cache
from django.core.files.storage import default_storage

from webportal.cases.models import Cell, Prediction
from webportal.celery import EXPLAIN_CELL_TASK, app

# A heatmap asked for again within this many seconds is not sent to the workers again.
RESEND_AFTER_SECONDS = 60


# Raised when the way heatmaps are made changes, so PNGs made the old way are not served:
# 2 = drawn over the square the classifier read (a located cell's `crop_cell`, not its bare
# box), the coarse map aligned with the pixels it came from (`ml.explain.upsample`).
HEATMAP_METHOD = 2


def heatmap_name(*, cell_id: int, model_sha256: str, label: str) -> str:
    return f"heatmaps/v{HEATMAP_METHOD}/{model_sha256[:16]}/{cell_id}-{label.replace(' ', '_')}.png"


def heatmap_name_for(*, cell: Cell) -> str | None:
    """Where the heatmap of the cell's predicted class is stored; None without a prediction."""
    model_version = cell.image.batch.model_version
    label = (
        Prediction.objects.filter(cell=cell, model_version=model_version)
        .values_list("label", flat=True)
        .first()
    )
    if label is None:
        return None
    return heatmap_name(cell_id=cell.pk, model_sha256=model_version.checkpoint_sha256, label=label)


def cached_heatmap(*, cell: Cell) -> bytes | None:
    name = heatmap_name_for(cell=cell)
    if name is None or not default_storage.exists(name):
        return None
    with default_storage.open(name, "rb") as stored:
        return bytes(stored.read())


def request_heatmap(*, cell: Cell) -> bool:
    """Ask a worker for the heatmap (at most once a minute per cell); False when it cannot be
    made (no prediction yet, or the image is not stored)."""
    if heatmap_name_for(cell=cell) is None or not cell.image.file:
        return False
    if cache.add(f"heatmap-requested:{cell.pk}", True, RESEND_AFTER_SECONDS):
        # Interactive work: the housekeeping queue is served before routine batches.
        app.send_task(EXPLAIN_CELL_TASK, args=(cell.pk,), queue="housekeeping")
    return True
