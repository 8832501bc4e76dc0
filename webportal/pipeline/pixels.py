"""A cell's pixels as the classifier reads them: the copy fitted at upload when it fits the
model, else cut from the whole image. The batch job and the batch guard's verdict read cells
the same way through these two functions."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image as PILImage

from ml.locate import crop_cell
from webportal.cases.models import Cell, Image
from webportal.cases.services import FIELD_COPY


def open_original(image: Image) -> PILImage.Image:
    """The whole image: a field's uncompressed copy while it has one (services.FIELD_COPY),
    else the stored PNG. The copy may be gone: a racing delivery located the field first."""
    if image.model_input and image.model_input_geometry == FIELD_COPY:
        try:
            with image.model_input.open("rb") as handle, PILImage.open(handle) as copy:
                return copy.convert("RGB")
        except FileNotFoundError:
            pass
    with image.file.open("rb") as handle, PILImage.open(handle) as stored:
        return stored.convert("RGB")


def open_cell(
    cell: Cell,
    *,
    geometry: str,
    original: Callable[[Image], PILImage.Image] = open_original,
) -> tuple[PILImage.Image, bool]:
    """The cell's pixels and whether they are the copy fitted at upload for this geometry.

    The fitted copy (stored uncompressed at the model's input size) gives the same input tensor
    as the original in a fraction of the time: no decompression, no resizing.
    A cell with a box (located in a field, or drawn by a reviewer) is cut out as the locator
    cuts it (ml.locate.crop_cell), so the classifier sees it framed alike either way.
    """
    image = cell.image
    if cell.box is None and image.model_input and image.model_input_geometry == geometry:
        with image.model_input.open("rb") as handle, PILImage.open(handle) as fitted:
            return fitted.convert("RGB"), True
    picture = original(image)
    if cell.box is not None:
        x, y, width, height = cell.box
        picture = crop_cell(picture, (x, y, x + width, y + height))
    return picture, False
