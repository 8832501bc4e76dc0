"""Which real images each benchmark uses: stable, reproducible selections from a class folder."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.data import grouped_stratified_split, list_samples

Sample = tuple[Path, str]  # (image path, lower-cased class folder name)


def interleaved(samples: Sequence[Sample]) -> list[Sample]:
    """Samples taken class by class in turn (1st of each class, then 2nd, ...), a stable order.

    The first N of this list cover every class, unlike the first N of the sorted listing.
    """
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    queues = [by_class[name] for name in sorted(by_class)]
    out: list[Sample] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        out.extend(q[rank] for q in queues if rank < len(q))
    return out


def pipeline_images(data: Path, count: int) -> list[Sample]:
    """The first `count` images across classes of `data` (see `interleaved`)."""
    found = interleaved(list_samples(data))
    if len(found) < count:
        raise ValueError(f"{data} has {len(found)} images, fewer than the {count} asked for")
    return found[:count]


@dataclass(frozen=True)
class Split:
    train: list[Sample]
    val: list[Sample]


def training_split(data: Path, recipe: dict[str, Any]) -> Split:
    """The train/val split `ml.train` made with this recipe (val_fraction, seed, limit).

    Replays ml.train.main's steps exactly, so the val images are ones the model never trained on.
    """
    seed = int(recipe.get("seed", 0))
    val_fraction = float(recipe.get("val_fraction", 0.15))
    found = list_samples(data)
    limit = int(recipe.get("limit") or 0)
    if limit:
        rng = random.Random(seed)
        found = [found[i] for i in sorted(rng.sample(range(len(found)), limit))]
    classes = sorted({c for _, c in found})
    labels = [classes.index(c) for _, c in found]
    group_by = recipe.get("group_by", "file")
    if group_by != "file":
        # Near-duplicate grouping is being reworked in ml.data; replaying an old grouping with
        # new code could put training images in "val". PBC models are split per file.
        raise ValueError(f"only group_by='file' splits can be replayed, not {group_by!r}")
    groups = list(range(len(found)))
    train_idx, val_idx = grouped_stratified_split(labels, groups, val_fraction, seed)
    return Split(train=[found[i] for i in train_idx], val=[found[i] for i in val_idx])


def stratified_subset(samples: Sequence[Sample], count: int, *, seed: int = 0) -> list[Sample]:
    """About `count` samples with every class in its original proportion (all when count <= 0)."""
    if count <= 0 or count >= len(samples):
        return list(samples)
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    rng = random.Random(seed)
    out: list[Sample] = []
    for name in sorted(by_class):
        members = by_class[name]
        share = max(1, round(count * len(members) / len(samples)))
        out.extend(sorted(rng.sample(members, min(share, len(members)))))
    return out
