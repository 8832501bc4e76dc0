"""Find every white cell in a whole smear field, crop each one, classify the crops.

    python -m ml.locate --model ml/weights/kaggle4-mobilenetv2.pt --images DIR --json OUT.json

writes, for every image in DIR (sorted by name), one entry of a JSON list:

    {"image": "field.jpg", "cells": [{"box": [x1, y1, x2, y2], "label": "neutrophil",
      "confidence": 0.97, "cut_by_border": false}]}

`box` is in pixels of the original image, x1/y1 inclusive and x2/y2 exclusive (the box is
`image[y1:y2, x1:x2]`); the portal's `Cell.box` stores the same box as (x, y, width, height).
An image with no white cell has `"cells": []`. `label` and `confidence` are the classifier's
(calibrated; a confidence under the model's threshold means "unidentified" in the portal).

How white cells are found (no learned detector; docs/MODELS.md "Locating white cells" has the
figures that chose this):

1. The field is halved (2x2 mean), and each pixel gets a stain score: blue minus green, less the
   field's median (so the stain's and the lamp's colour cast cancel), scaled by 200 over the
   field's background brightness (its 90th percentile of grey: a dim or bright field scores
   alike). Romanowsky-stained nuclei are violet (blue far above green); red cells are pink and
   the background pale (blue close to green), and eosinophil granules are orange.
2. Pixels scoring above `stain_threshold` form the nucleus mask (opened once to drop specks).
   Connected pieces with at least `min_nucleus_area` pixels (full-resolution pixels) are nuclei;
   smaller pieces within `join_distance` of a nucleus are lobes or fragments of it (a
   neutrophil's lobes) and extend it; smaller pieces alone are platelets or debris and are
   ignored. Two white cells side by side stay two as long as their nuclei do not touch (their
   cytoplasm may); nuclei that touch come out as one cell (a known limit).
   A lobed nucleus (a neutrophil's segments, an eosinophil's two lobes) may also break into
   several pieces that each pass `min_nucleus_area`: nuclei within `merge_gap` of each other
   are one cell when their joint box's longer side is at most `merge_max_side` (a size prior:
   no single white cell's nucleus is larger), closest pairs first; two cells' nuclei, a few
   pixels apart too, together exceed it and stay two.
3. The cell's box is the nucleus's bounding box scaled by `box_scale` about its centre (the
   cytoplasm around it), clipped to the image.

Border rule: a cell cut by the image border is reported when the part of its nucleus inside the
field alone passes `min_nucleus_area`, as any cell; it is then flagged `cut_by_border` (its
nucleus touches the edge). A sliver of a cut cell is not reported.

Parameters are in pixels of fields like BCCD's (640x480, a red cell about 100 px across); for
other magnifications scale them with `LocateParams.for_pixel_scale`.

Field or single cell: an upload is a field when its longer side is at least
`FIELD_MIN_LONG_SIDE` pixels (camera fields: 640 and more; single-cell crops such as PBC's
360x363 or the Kaggle set's 320x240 are smaller), unless its content says otherwise: a
field-sized image of which at least `CLOSE_UP_MIN_STAINED` is violet (blue over green by 40) is
a single cell photographed close up (`image_kind`). A batch may force either kind.

Crops: a square centred on the cell's box, `CROP_CONTEXT` times its longer side, black outside
the field (as the classifiers' training images are padded), which the classifier then fits with
its own eval geometry (e.g. the Kaggle model's stain crop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CROP_CONTEXT = 1.5  # crop side over the cell box's longer side
FIELD_MIN_LONG_SIDE = 500  # pixels: an image whose longer side is shorter is a single cell
# A field-sized image this much stained is a close-up of one cell. BCCD's 293 fields: at most
# 0.136 (median 0.053); a white cell's box enlarged to 640x560: 0.30.
CLOSE_UP_MIN_STAINED = 0.25
CLOSE_UP_BLUE_OVER_GREEN = 40

Kind = Literal["field", "cell"]


@dataclass(frozen=True)
class LocateParams:
    """Thresholds of the locator, in pixels of a BCCD-like field (see the module docstring)."""

    stain_threshold: float = 40.0  # normalised blue-minus-green score of a nucleus pixel
    min_nucleus_area: int = 3200  # full-resolution pixels of nucleus visible in the field
    join_distance: int = 36  # pieces this close to a nucleus (full-resolution px) belong to it
    box_scale: float = 1.2  # cell box side over nucleus box side
    downscale: int = 2  # work on the field shrunk by this factor
    # Two nuclei this close (full-resolution px) are lobes of one cell if together they are no
    # larger than one cell's nucleus can be (`merge_max_side`: the longer side of their joint
    # box); 0 turns the merge off.
    merge_gap: int = 24
    merge_max_side: int = 240

    def for_pixel_scale(self, factor: float) -> LocateParams:
        """The same rule for fields magnified `factor` times BCCD's (lengths x f, areas x f^2)."""
        return replace(
            self,
            min_nucleus_area=round(self.min_nucleus_area * factor * factor),
            join_distance=round(self.join_distance * factor),
            merge_gap=round(self.merge_gap * factor),
            merge_max_side=round(self.merge_max_side * factor),
            downscale=max(1, round(self.downscale * factor)),
        )


DEFAULT_PARAMS = LocateParams()


@dataclass(frozen=True)
class LocatedCell:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in original pixels, x2/y2 exclusive
    nucleus_box: tuple[int, int, int, int]  # same convention
    nucleus_area: int  # full-resolution pixels
    cut_by_border: bool

    @property
    def xywh(self) -> tuple[int, int, int, int]:
        """The box as (x, y, width, height): the portal's `Cell.box` convention."""
        x1, y1, x2, y2 = self.box
        return (x1, y1, x2 - x1, y2 - y1)


def stain_score(rgb: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Per-pixel nucleus stain score of an H x W x 3 float image (0-255): see step 1 above."""
    blue_over_green = rgb[..., 2] - rgb[..., 1]
    grey = rgb.mean(axis=-1)
    background = max(float(np.percentile(grey, 90)), 1.0)
    score: npt.NDArray[np.float32] = (blue_over_green - np.median(blue_over_green)) * (
        200.0 / background
    )
    return score


def _small_rgb(image: Image.Image, factor: int) -> npt.NDArray[np.float32]:
    img = image if image.mode == "RGB" else image.convert("RGB")
    if factor > 1:
        img = img.reduce(factor)  # box filter: the mean of each factor x factor block
    return np.asarray(img, dtype=np.float32)


def locate(image: Image.Image, params: LocateParams = DEFAULT_PARAMS) -> list[LocatedCell]:
    """The white cells of a field, largest nucleus first."""
    f = params.downscale
    width, height = image.size
    score = stain_score(_small_rgb(image, f))
    mask = ndimage.binary_opening(score > params.stain_threshold)
    pieces, count = ndimage.label(mask)
    if count == 0:
        return []
    areas = np.bincount(pieces.ravel(), minlength=count + 1)
    areas[0] = 0
    big_ids = np.flatnonzero(areas * f * f >= params.min_nucleus_area)
    if big_ids.size == 0:
        return []
    # Nuclei keep their own labels 1..n, or share one when merged as lobes of one cell; a small
    # piece takes the label of the nucleus within join_distance of it (the nearest by the
    # dilation's maximum), or none.
    group = _merge_lobes(pieces, big_ids, params)
    relabel = np.zeros(count + 1, dtype=np.int32)
    relabel[big_ids] = group
    nuclei = relabel[pieces]
    group_area = np.bincount(group, weights=areas[big_ids])
    reach = 2 * max(1, round(params.join_distance / f)) + 1
    grown = ndimage.maximum_filter(nuclei, size=reach)
    owner = np.where(mask, np.where(nuclei > 0, nuclei, grown), 0)
    cells = []
    for i, where in enumerate(ndimage.find_objects(owner), start=1):
        if where is None:
            continue
        ys, xs = where
        nx1, ny1, nx2, ny2 = xs.start * f, ys.start * f, xs.stop * f, ys.stop * f
        nx2, ny2 = min(nx2, width), min(ny2, height)
        cx, cy = (nx1 + nx2) / 2, (ny1 + ny2) / 2
        half_w, half_h = (nx2 - nx1) * params.box_scale / 2, (ny2 - ny1) * params.box_scale / 2
        box = (
            max(0, round(cx - half_w)),
            max(0, round(cy - half_h)),
            min(width, round(cx + half_w)),
            min(height, round(cy + half_h)),
        )
        cut = nx1 <= 0 or ny1 <= 0 or nx2 >= width or ny2 >= height
        area = int(group_area[i]) * f * f
        cells.append(LocatedCell(box, (nx1, ny1, nx2, ny2), area, cut))
    cells.sort(key=lambda c: -c.nucleus_area)
    return cells


def _merge_lobes(
    pieces: npt.NDArray[np.int32], big_ids: npt.NDArray[np.intp], params: LocateParams
) -> npt.NDArray[np.int32]:
    """The cell (1..) of each nucleus piece `big_ids[k]`: pieces within `merge_gap` of each other
    share one when their joint box's longer side stays within `merge_max_side` (closest pairs
    first), else each is its own cell."""
    n = big_ids.size
    parent = list(range(n))
    if n > 1 and params.merge_gap > 0:
        f = params.downscale
        reach = max(1, round(params.merge_gap / f))
        height, width = pieces.shape
        index = {int(label): k for k, label in enumerate(big_ids)}
        slices = ndimage.find_objects(pieces)
        boxes: list[list[int]] = []
        pairs: list[tuple[float, int, int]] = []  # (gap in working pixels, k, other)
        for k, label in enumerate(big_ids):
            ys, xs = slices[label - 1]
            boxes.append([xs.start, ys.start, xs.stop, ys.stop])
            y0, y1 = max(0, ys.start - reach), min(height, ys.stop + reach)
            x0, x1 = max(0, xs.start - reach), min(width, xs.stop + reach)
            window = pieces[y0:y1, x0:x1]
            distance = ndimage.distance_transform_edt(window != label)
            for v in np.unique(window[distance <= reach]):
                other = index.get(int(v))
                if other is not None and other > k:
                    gap = float(distance[window == v].min())
                    pairs.append((gap, k, other))
        limit = params.merge_max_side / f

        def root(k: int) -> int:
            while parent[k] != k:
                k = parent[k]
            return k

        joint = {k: list(b) for k, b in enumerate(boxes)}
        for _, a, b in sorted(pairs):
            ra, rb = root(a), root(b)
            if ra == rb:
                continue
            ba, bb = joint[ra], joint[rb]
            union = [min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3])]
            if max(union[2] - union[0], union[3] - union[1]) <= limit:
                parent[rb] = ra
                joint[ra] = union
        roots = [root(k) for k in range(n)]
    else:
        roots = list(range(n))
    order = {r: i for i, r in enumerate(dict.fromkeys(roots), start=1)}
    return np.array([order[r] for r in roots], dtype=np.int32)


def crop_cell(
    image: Image.Image, box: Sequence[int], *, context: float = CROP_CONTEXT, min_side: int = 0
) -> Image.Image:
    """A square around `box` (x1, y1, x2, y2), `context` times its longer side (at least
    `min_side`), black outside the image: what the classifier is given for that cell."""
    x1, y1, x2, y2 = box
    side = max(1, min_side, round(max(x2 - x1, y2 - y1) * context))
    left = round((x1 + x2 - side) / 2)
    top = round((y1 + y2 - side) / 2)
    img = image if image.mode == "RGB" else image.convert("RGB")
    return img.crop((left, top, left + side, top + side))


def list_images(folder: str | Path) -> list[Path]:
    return sorted(
        p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def kind_by_size(width: int, height: int) -> Kind:
    """What an image's size alone says: a whole field, or a single-cell crop."""
    return "field" if max(width, height) >= FIELD_MIN_LONG_SIDE else "cell"


def stained_fraction(image: Image.Image) -> float:
    """The share of the image's pixels whose blue exceeds green by `CLOSE_UP_BLUE_OVER_GREEN`
    (raw, not normalised by the field's median: in a close-up the nucleus is the median)."""
    rgb = np.asarray(_small_rgb(image, 2), dtype=np.int16)
    return float(((rgb[..., 2] - rgb[..., 1]) >= CLOSE_UP_BLUE_OVER_GREEN).mean())


def image_kind(image: Image.Image) -> Kind:
    """Field or single cell, from the image's size and content (see the module docstring)."""
    if kind_by_size(*image.size) == "cell":
        return "cell"
    return "cell" if stained_fraction(image) >= CLOSE_UP_MIN_STAINED else "field"
