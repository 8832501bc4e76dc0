"""Folder datasets and a stratified, grouped train/validation split.

Layout: ROOT/<class>/<image>; class names are the folder names lower-cased. Groups keep
near-copies of one cell on one side of the split: in PBC every file is its own cell, while the
Kaggle set holds ~35 augmented copies per cell, found here by a rotation-invariant fingerprint
(`near_duplicate_groups`).
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


def cell_descriptor(
    img: Image.Image, *, size: int = 120, rings: int = 16, harmonics: int = 8
) -> np.ndarray:
    """A fingerprint of one cell image that survives rotation (any angle), flips and shifts.

    The image is sampled on polar rings around the centroid of its stained (purple: blue well
    above green) pixels, and each ring keeps only the magnitudes of its first angular Fourier
    harmonics, which rotating or mirroring the image about that centre does not change. Two
    channels are used: grey level (cell and red-cell layout) and stain (nucleus shape). Black
    corners left by rotating a copy are filled with the image's median grey.
    """
    img = img.convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.float32) / 255.0
    valid = a.max(axis=-1) > 0.08
    grey = a.mean(axis=-1)
    stain = np.clip(a[..., 2] - a[..., 1] - 0.15, 0.0, None) * valid
    fill = float(np.median(grey[valid])) if valid.any() else 0.5
    grey = np.where(valid, grey, fill)
    hh, ww = grey.shape
    if stain.sum() > 1e-5 * hh * ww:
        ys, xs = np.mgrid[0:hh, 0:ww]
        cy, cx = (stain * ys).sum() / stain.sum(), (stain * xs).sum() / stain.sum()
    else:  # nothing stained (not a smear image): the centre of the image
        cy, cx = (hh - 1) / 2, (ww - 1) / 2
    angles = 64
    r = (np.arange(rings) + 0.5) / rings * 0.45 * min(hh, ww)
    t = np.arange(angles) / angles * 2 * np.pi
    yi = np.round(cy + r[:, None] * np.sin(t)[None]).astype(int)
    xi = np.round(cx + r[:, None] * np.cos(t)[None]).astype(int)
    inside = (yi >= 0) & (yi < hh) & (xi >= 0) & (xi < ww)
    yi, xi = yi.clip(0, hh - 1), xi.clip(0, ww - 1)
    out = []
    for channel, outside in ((grey, fill), (stain, 0.0)):
        v = np.where(inside, channel[yi, xi], outside)
        out.append((np.abs(np.fft.rfft(v, axis=1))[:, :harmonics] / angles).ravel())
    return np.concatenate(out).astype(np.float32)


def _descriptor_of_file(path: str | os.PathLike[str]) -> np.ndarray:
    with Image.open(path) as img:
        img.draft("RGB", (160, 160))  # JPEG: decode at reduced scale, much faster
        return cell_descriptor(img)


def file_descriptors(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """`cell_descriptor` of every file, one row each (float64)."""
    return np.stack([_descriptor_of_file(p) for p in paths]).astype(np.float64)


def near_duplicate_groups(
    paths: Sequence[str | os.PathLike[str]],
    labels: Sequence[int] | None = None,
    *,
    neighbours: int = 5,
    max_distance: float = 12.0,
    chunk: int = 1024,
    descriptors: np.ndarray | None = None,
) -> list[int]:
    """Group id per path, putting near-copies of one cell (rotated, flipped, shifted) together.

    Descriptors (`cell_descriptor`) are standardised per feature over the whole set; every
    image is linked to its nearest neighbour, and to each of its next `neighbours` - 1 nearest
    within `max_distance`; links are closed transitively (union-find). With `labels`, only
    images of the same class are linked: a near-copy filed under another class is a labelling
    question, not a reason to merge two classes' groups. Linking too much only makes groups
    coarser (the split stays leak-free); linking too little leaks, hence the unconditional
    nearest-neighbour link. Defaults tuned on the Kaggle set (docs/MODELS.md). `descriptors`:
    those of `paths` (`file_descriptors`) when the caller has them already.
    """
    n = len(paths)
    if n < 2:
        return list(range(n))
    x = file_descriptors(paths) if descriptors is None else descriptors.astype(np.float64)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    sq = (x**2).sum(axis=1)
    lab = None if labels is None else np.asarray(labels)
    k = min(neighbours, n - 1)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for s in range(0, n, chunk):
        d2 = sq[s : s + chunk, None] + sq[None, :] - 2 * x[s : s + chunk] @ x.T
        d = np.sqrt(np.maximum(d2, 0.0))
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf
        if lab is not None:
            d[lab[s : s + chunk, None] != lab[None, :]] = np.inf
        near = np.argsort(d, axis=1)[:, :k]
        for row, js in enumerate(near):
            for rank, j in enumerate(js):
                dist = d[row, j]
                if not np.isfinite(dist) or (rank > 0 and dist > max_distance):
                    break
                ri, rj = find(s + row), find(int(j))
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(n)]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]
