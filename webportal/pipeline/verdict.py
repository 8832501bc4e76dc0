"""The batch guard's verdict on a batch (ml.ood): opened on the first claim, computed once
every cell is classified, kept on the batch in the transaction that finishes it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from django.utils import timezone
from PIL import Image as PILImage

from ml.inference import BatchCheck, Classifier
from ml.locate import crop_cell
from webportal.cases.models import Batch, Cell, Image, ModelVersion
from webportal.core.errors import ServiceError
from webportal.pipeline.pixels import open_cell, open_original

logger = logging.getLogger(__name__)


# Cells the batch guard looks at, evenly spaced over the batch: its thresholds are calibrated
# for batches of up to 100 cells (ml.ood.BATCH_SIZES), and each costs a decode and a forward
# pass of the model as built.
BATCH_CHECK_CELLS = 100


def open_batch_check(*, batch_id: int, guarded: bool) -> None:
    """On the first claim, say whether a verdict is coming: pending (the model has a guard: no
    cell is auto-accepted until the verdict) or no_guard. Later deliveries find it said."""
    Batch.objects.filter(pk=batch_id, ood_check=Batch.Check.NOT_CHECKED).update(
        ood_check=Batch.Check.PENDING if guarded else Batch.Check.NO_GUARD
    )


def check_if_pending(
    *, batch_id: int, model_version: ModelVersion, classifier: Classifier
) -> BatchCheck | None:
    """The guard's verdict on the batch, computed when it is still pending (None otherwise)."""
    pending = Batch.objects.filter(pk=batch_id, ood_check=Batch.Check.PENDING).exists()
    if not pending:
        return None
    return check_batch(batch_id=batch_id, model_version=model_version, classifier=classifier)


def check_batch(
    *, batch_id: int, model_version: ModelVersion, classifier: Classifier
) -> BatchCheck:
    """The batch guard's verdict on the cells of an uploaded batch (ml.ood), once every cell
    is classified.

    One verdict per uploaded batch, whatever the chunks and shards it was classified in:
    the cells the worker classified (single cells and cells located in fields; not those a
    reviewer adds later), at most BATCH_CHECK_CELLS evenly spaced in upload order, read as the
    classifier read them. The same cells give the same verdict on a redelivery. A batch with
    no cell gets a verdict of 0 cells checked and no threshold (too few).
    """
    picked = _cells_to_check(batch_id=batch_id, model_version=model_version)
    if not picked:
        return BatchCheck(score=0.0, threshold=None, flagged=False, cells_checked=0)
    pictures, fitted = _open_cells(picked, geometry=classifier.geometry)
    tensor = classifier.preprocess(pictures, fitted=fitted)
    check = classifier.check_batch(tensor, max_cells=BATCH_CHECK_CELLS)
    if check is None:  # a model without a guard: never asked (no pending verdict)
        raise ServiceError(f"{model_version} has no batch guard to check batch {batch_id} with")
    return check


def _cells_to_check(*, batch_id: int, model_version: ModelVersion) -> list[Cell]:
    """The cells the guard judges, in the order it scores them: those the worker classified
    (not those a reviewer added), at most BATCH_CHECK_CELLS evenly spaced in upload order."""
    cells = list(
        Cell.objects.filter(
            image__batch_id=batch_id,
            image__status=Image.Status.OK,
            predictions__model_version=model_version,
        )
        .exclude(origin=Cell.Origin.REVIEWER)
        .select_related("image")
        .order_by("id")
    )
    # Exactly min(n, BATCH_CHECK_CELLS) cells, evenly spaced: a batch of 101 cells is judged
    # on 100 by the threshold for 100 (a stride of 2 would check 51, by the threshold for 20).
    count = min(len(cells), BATCH_CHECK_CELLS)
    return [cells[i * len(cells) // count] for i in range(count)]


def _open_cells(cells: Sequence[Cell], *, geometry: str) -> tuple[list[PILImage.Image], list[bool]]:
    """The cells' pixels as the classifier read them; a field with several cells is decoded once
    (its cells are consecutive in id order)."""
    pictures: list[PILImage.Image] = []
    fitted: list[bool] = []
    field: tuple[int, PILImage.Image] | None = None
    for cell in cells:
        if cell.box is None:
            picture, was_fitted = open_cell(cell, geometry=geometry)
        else:
            if field is None or field[0] != cell.image_id:
                field = (cell.image_id, open_original(cell.image))
            x, y, width, height = cell.box
            picture, was_fitted = crop_cell(field[1], (x, y, x + width, y + height)), False
        pictures.append(picture)
        fitted.append(was_fitted)
    return pictures, fitted


def record_check(batch: Batch, check: BatchCheck | None) -> None:
    """Keep the verdict on the batch (in the caller's transaction), only while still pending:
    the first delivery to finish decides, a redelivery changes nothing."""
    if check is None or batch.ood_check != Batch.Check.PENDING:
        return
    if check.threshold is None:
        batch.ood_check = Batch.Check.TOO_FEW
    else:
        batch.ood_check = Batch.Check.FLAGGED if check.flagged else Batch.Check.PASSED
    batch.ood_score = check.score if check.cells_checked else None
    batch.ood_threshold = check.threshold
    batch.ood_threshold_size = check.threshold_size
    batch.ood_cells_checked = check.cells_checked
    batch.ood_checked_at = timezone.now()
    # Each checked cell's own score, by the same cells in the same order as the check.
    checked = _cells_to_check(batch_id=batch.pk, model_version=batch.model_version)
    if len(checked) == len(check.cell_scores):
        batch.ood_cell_scores = {
            str(cell.pk): round(score, 4)
            for cell, score in zip(checked, check.cell_scores, strict=True)
        }
        batch.ood_cell_threshold = check.cell_threshold
    batch.save(
        update_fields=[
            "ood_check",
            "ood_score",
            "ood_threshold",
            "ood_threshold_size",
            "ood_cells_checked",
            "ood_checked_at",
            "ood_cell_scores",
            "ood_cell_threshold",
        ]
    )
    if batch.ood_check == Batch.Check.FLAGGED:
        logger.warning(
            "batch %s flagged by the batch guard: score %.3f > %.3f (%d cells)",
            batch.pk,
            check.score,
            check.threshold,
            check.cells_checked,
        )
