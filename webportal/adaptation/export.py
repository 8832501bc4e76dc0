"""Writing a lab's reviewed cells as folders `ml.train` and `ml.evaluate` read.

    FOLDER/train/<class>/<cell id>.png      the cells the adaptation learns from
    FOLDER/heldout/<class>/<cell id>.png    the cells both models are measured on

Each picture is what the classifier is given for that cell, before its own resizing: a cell
uploaded alone is its whole stored image; a cell with a box (located in a field, or drawn by a
reviewer) is the locator's square around the box (`ml.locate.crop_cell`), exactly as the worker
cuts it. Pillow only, no PyTorch. Only the cells of the job's plan are read, and they are read
by the lab: a cell id of another lab in a plan would be refused, not exported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image as PILImage

from ml.locate import crop_cell
from webportal.accounts.models import Lab
from webportal.cases.models import Cell
from webportal.core.errors import ServiceError


def cell_picture(cell: Cell) -> PILImage.Image:
    """The cell as the classifier sees it before resizing (RGB)."""
    image = cell.image
    if not image.file:
        raise ServiceError(f"The stored image of cell {cell.pk} is missing.")
    with image.file.open("rb") as handle, PILImage.open(handle) as stored:
        picture = stored.convert("RGB")
    if cell.box is not None:
        x, y, width, height = (int(v) for v in cell.box)
        picture = crop_cell(picture, (x, y, x + width, y + height))
    return picture


def export_cells(
    *, lab: Lab, cells: Iterable[Sequence[object]], folder: Path, chunk: int = 500
) -> Counter[str]:
    """Write (cell id, label) pairs of `lab` as folder/<label>/<cell id>.png; counts per label.

    Cells are read in chunks (one query each); a cell not of `lab` stops the export.
    """
    pairs = [(int(str(cell_id)), str(label)) for cell_id, label in cells]
    written: Counter[str] = Counter()
    for start in range(0, len(pairs), chunk):
        part = dict(pairs[start : start + chunk])
        rows = Cell.objects.filter(pk__in=part, image__batch__case__lab=lab).select_related("image")
        found = {cell.pk: cell for cell in rows}
        if len(found) != len(part):
            raise ServiceError(f"{len(part) - len(found)} cells of the plan are not of {lab}.")
        for cell_id, label in part.items():
            target = folder / label
            target.mkdir(parents=True, exist_ok=True)
            cell_picture(found[cell_id]).save(target / f"{cell_id}.png", format="PNG")
            written[label] += 1
    return written
