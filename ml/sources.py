"""Several labelled sources at once: their cells, their labs, and which classes each labels.

A source is one labelled collection of single-cell images, given on the command line as
`NAME:LAB:KIND:PATH[:LIMIT]`:

- KIND `folder`: PATH/<class>/<image>, every file its own cell (PBC).
- KIND `copies`: the same layout, but files are augmented near-copies of fewer source cells
  (the Kaggle set), grouped by `ml.data.near_duplicate_groups` so no cell straddles a split.
- KIND `voc`: whole smear fields PATH/JPEGImages/*.jpg with Pascal VOC boxes in
  PATH/Annotations/*.xml and the white cells' subtypes in PATH/labels.csv (BCCD): each WBC box is
  cropped (with a margin) and labelled when the field's labels say unambiguously what it is
  (one box and one subtype, or every listed subtype the same).

LAB names the laboratory (camera, stain, hospital): sources of one lab are left out together
by `ml.crosscheck`. LIMIT keeps about that many cells, for a CPU budget: a class-stratified
random subset, or for `copies` the same number of copies of every source cell.

Each source labels only some classes. `class_mask` says which, so that the loss can be masked to
them (`masked_cross_entropy`): a PBC platelet is never taught as "not a lymphocyte" by a source
that has no platelet folder... and a Kaggle cell is never taught as "not a platelet".
"""

from __future__ import annotations

import csv
import random
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ml.data import list_samples, near_duplicate_groups

KINDS = ("folder", "copies", "voc")
BOX_MARGIN = 0.25  # a VOC box is widened by this fraction of its size on each side


@dataclass(frozen=True)
class SourceSpec:
    name: str
    lab: str
    kind: str
    path: Path
    limit: int = 0

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        parts = text.split(":", 4)
        if len(parts) < 4 or parts[2] not in KINDS:
            raise ValueError(
                f"source {text!r}: expected NAME:LAB:KIND:PATH[:LIMIT] with KIND one of {KINDS}"
            )
        name, lab, kind, path = parts[:4]
        limit = int(parts[4]) if len(parts) == 5 else 0
        return cls(name=name, lab=lab, kind=kind, path=Path(path), limit=limit)


@dataclass(frozen=True)
class Cell:
    """One labelled cell image: a file, or a box of a file (left, top, right, bottom)."""

    path: Path
    label: str
    source: str
    group: str  # cells of one group are copies of one cell: never split apart
    box: tuple[int, int, int, int] | None = None

    def open(self) -> Image.Image:
        with Image.open(self.path) as img:
            rgb = img.convert("RGB")
        return rgb.crop(self.box) if self.box is not None else rgb


def voc_cells(root: Path, source: str) -> list[Cell]:
    """The unambiguously labelled white cells of a VOC-annotated field folder (BCCD)."""
    labels: dict[str, list[str]] = {}
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            names = [v.strip().lower() for v in (row.get("wbc_category") or "").split(",")]
            labels[Path(row["image"]).stem] = [n for n in names if n]
    cells = []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        subtypes = labels.get(xml.stem, [])
        tree = ET.parse(xml)  # noqa: S314 - local annotation files of a public data set
        boxes = []
        for obj in tree.findall("object"):
            if (obj.findtext("name") or "").strip().upper() != "WBC":
                continue
            bb = obj.find("bndbox")
            if bb is None:
                continue
            boxes.append(
                tuple(int(float(bb.findtext(k) or 0)) for k in ("xmin", "ymin", "xmax", "ymax"))
            )
        if not boxes or len(set(subtypes)) != 1 or len(subtypes) not in (1, len(boxes)):
            continue  # no white cell, or which box is which subtype is not known
        image = root / "JPEGImages" / f"{xml.stem}.jpg"
        if not image.exists():
            continue
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            mx, my = round((x1 - x0) * BOX_MARGIN), round((y1 - y0) * BOX_MARGIN)
            box = (max(0, x0 - mx), max(0, y0 - my), x1 + mx, y1 + my)
            cells.append(Cell(image, subtypes[0], source, f"{source}:{xml.stem}:{k}", box))
    return cells


def load_source(spec: SourceSpec, *, seed: int = 0) -> list[Cell]:
    """The cells of one source, in a stable order (a LIMIT subset drawn with seed)."""
    return limit_cells(list_cells(spec), spec, seed=seed)


def list_cells(spec: SourceSpec) -> list[Cell]:
    """Every cell of a source, LIMIT not applied (grouping copies is the slow part)."""
    if spec.kind == "voc":
        return voc_cells(spec.path, spec.name)
    found = list_samples(spec.path)
    if spec.kind == "copies":
        names = sorted({c for _, c in found})
        ids = near_duplicate_groups([p for p, _ in found], [names.index(c) for _, c in found])
    else:
        ids = list(range(len(found)))
    return [Cell(p, c, spec.name, f"{spec.name}:{g}") for (p, c), g in zip(found, ids, strict=True)]


def limit_cells(cells: Sequence[Cell], spec: SourceSpec, *, seed: int = 0) -> list[Cell]:
    """The source's LIMIT applied: copies of every cell for `copies`, else a random
    class-stratified subset of whole groups."""
    if not spec.limit or spec.limit >= len(cells):
        return list(cells)
    if spec.kind == "copies":
        return copies_subset(cells, spec.limit)
    return stratified_groups_subset(cells, spec.limit, seed=seed)


def copies_subset(cells: Sequence[Cell], n: int) -> list[Cell]:
    """About n cells keeping every group: the same number of copies from each (evenly spaced
    in the group's order), so the subset keeps all the source cells rather than fewer whole
    ones."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cells):
        members[c.group].append(i)
    per_group = max(1, -(-n // len(members)))
    keep: set[int] = set()
    for idx in members.values():
        step = max(1, len(idx) / per_group)
        keep.update(idx[int(k * step)] for k in range(min(per_group, len(idx))))
    return [c for i, c in enumerate(cells) if i in keep]


def stratified_groups_subset(cells: Sequence[Cell], n: int, *, seed: int) -> list[Cell]:
    """About n cells in whole groups, each class keeping its share, in the original order."""
    by_class: dict[str, list[str]] = defaultdict(list)
    size: dict[str, int] = defaultdict(int)
    label_of: dict[str, str] = {}
    for c in cells:
        if c.group not in label_of:
            label_of[c.group] = c.label
            by_class[c.label].append(c.group)
        size[c.group] += 1
    rng = random.Random(seed)  # noqa: S311 - a reproducible subset, not a secret
    keep: set[str] = set()
    for label in sorted(by_class):
        groups = by_class[label]
        rng.shuffle(groups)
        target = n * sum(size[g] for g in groups) / len(cells)
        taken = 0
        for g in groups:
            if taken >= target:
                break
            keep.add(g)
            taken += size[g]
    return [c for c in cells if c.group in keep]


def class_mask(cells: Sequence[Cell], classes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per source, a bool vector over classes: True where that source labels the class."""
    labelled: dict[str, set[str]] = defaultdict(set)
    for c in cells:
        labelled[c.source].add(c.label)
    return {s: torch.tensor([k in names for k in classes]) for s, names in labelled.items()}


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy over each sample's own source's classes only.

    mask: N x C bool, True for the classes sample i's source labels. Logits of the other
    classes are left out of the softmax, so nothing pushes them down: a class a source does not
    label is never taught as absent. Label smoothing spreads only over the allowed classes.
    """
    masked = logits.float().masked_fill(~mask, float("-inf"))
    logp = torch.log_softmax(masked, dim=1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    if label_smoothing == 0:
        return nll.mean()
    smooth = -(logp.masked_fill(~mask, 0.0)).sum(1) / mask.sum(1)
    return ((1 - label_smoothing) * nll + label_smoothing * smooth).mean()


class CellDataset(Dataset[tuple[torch.Tensor, int]]):
    """(image tensor, label index) for cells, through transform."""

    def __init__(
        self,
        cells: Sequence[Cell],
        classes: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.cells = list(cells)
        self.index = {c: i for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        cell = self.cells[i]
        return self.transform(cell.open()), self.index[cell.label]
