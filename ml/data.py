"""Folder datasets and a stratified, grouped train/validation split.

Layout: ROOT/<class>/<image>; class names are the folder names lower-cased. Groups keep
near-copies of one cell on one side of the split: in PBC every file is its own cell, while the
Kaggle set holds ~35 augmented copies per cell, found here by a perceptual hash.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def find_classes(root: str | os.PathLike[str]) -> list[str]:
    """Sorted, lower-cased sub-folder names of root."""
    return sorted(p.name.lower() for p in Path(root).iterdir() if p.is_dir())


def list_samples(root: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """(path, lower-cased folder name) for every image under root/<class>/, in a stable order."""
    out = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith("."):
                out.append((f, folder.name.lower()))
    return out


class ImageList(Dataset[tuple[torch.Tensor, int]]):
    """(image tensor, label index) over an explicit list of (path, label index)."""

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


class ImageFolder(ImageList):
    """ImageList over ROOT/<class>/*; `classes[i]` names label i."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.classes = find_classes(root)
        index = {c: i for i, c in enumerate(self.classes)}
        super().__init__([(p, index[c]) for p, c in list_samples(root)], transform)


def grouped_stratified_split(
    labels: Sequence[int], groups: Sequence[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Return (train indices, val indices).

    Whole groups go to one side. Each group is filed under its most common label and, class by
    class, shuffled groups are moved to validation until that class's share is reached, so every
    class is represented in proportion. Deterministic for a given seed.
    """
    if len(labels) != len(groups):
        raise ValueError("labels and groups differ in length")
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[int, list[int]] = defaultdict(list)
    for g in sorted(members):
        votes = [labels[i] for i in members[g]]
        by_class[max(set(votes), key=lambda c: (votes.count(c), -c))].append(g)

    rng = random.Random(seed)  # noqa: S311 - a reproducible shuffle, not a secret
    val: list[int] = []
    for c in sorted(by_class):
        gs = by_class[c]
        rng.shuffle(gs)
        target = round(val_fraction * sum(len(members[g]) for g in gs))
        taken = 0
        for g in gs:
            if taken >= target:
                break
            val.extend(members[g])
            taken += len(members[g])
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val)


def dhash(img: Image.Image, size: int = 8) -> np.ndarray:
    """Difference hash: sign of horizontal gradients of a (size+1)x size greyscale thumbnail."""
    small = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR))
    return (small[:, 1:] > small[:, :-1]).ravel()


def _dihedral(img: Image.Image) -> list[Image.Image]:
    t = Image.Transpose
    rots = [
        img,
        img.transpose(t.ROTATE_90),
        img.transpose(t.ROTATE_180),
        img.transpose(t.ROTATE_270),
    ]
    return rots + [r.transpose(t.FLIP_LEFT_RIGHT) for r in rots]


def near_duplicate_groups(
    paths: Sequence[str | os.PathLike[str]], *, max_distance: int = 10, chunk: int = 1024
) -> list[int]:
    """Group id per path; images whose dHash differ in <= max_distance bits share a group.

    Each image is compared with all 8 rotations/flips of every other, because the Kaggle copies
    were made by rotating and flipping; links are closed transitively with union-find.
    """
    base = []
    variants = []
    for p in paths:
        with Image.open(p) as img:
            views = _dihedral(img.convert("RGB"))
        hashes = [dhash(v) for v in views]
        base.append(hashes[0])
        variants.append(hashes)
    n = len(base)
    a = np.stack(base).astype(np.float32)  # n x 64
    v = np.stack(variants).astype(np.float32)  # n x 8 x 64
    bits = a.shape[1]

    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    vb = v.reshape(n * 8, bits)
    for s in range(0, n, chunk):
        q = a[s : s + chunk]
        # Hamming distance of bit vectors through matrix products: agreements of ones + zeros.
        agree = q @ vb.T + (1 - q) @ (1 - vb).T
        dist = (bits - agree).reshape(len(q), n, 8).min(axis=2)
        for i, j in zip(*np.nonzero(dist <= max_distance), strict=True):
            ri, rj = find(s + int(i)), find(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(n)]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]
