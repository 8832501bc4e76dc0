"""Test helpers importable by any test suite (the portal's worker tests use these)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml.checkpoint import IDENTITY_ONLY, save_checkpoint
from ml.model import build_model
from ml.ood import OODGuard
from ml.stain import StainStats
from ml.transforms import IMAGENET_MEAN, IMAGENET_STD


def make_tiny_checkpoint(
    path: str | os.PathLike[str],
    classes: list[str],
    *,
    input_size: int = 32,
    seed: int = 0,
    resize: str = "crop",
    temperature: float = 1.0,
    threshold: float | None = None,
    ood: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    views: Sequence[str] = IDENTITY_ONLY,
    stain: tuple[StainStats, StainStats] | None = None,
) -> Path:
    """Save a randomly initialised mobilenet_v2 checkpoint for `classes` (or `model`, built
    so), with test-time `views` and a (source, target) `stain` if given; returns its path."""
    if model is None:
        torch.manual_seed(seed)
        model = build_model("mobilenet_v2", len(classes), pretrained=None)
    save_checkpoint(
        path,
        model,
        arch="mobilenet_v2",
        classes=classes,
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        recipe={"note": "random weights for tests"},
        metrics={},
        resize=resize,
        temperature=temperature,
        threshold=threshold,
        ood=ood,
        views=views,
        stain=stain,
    )
    return Path(path)


def synthetic_cells(
    n: int, *, seed: int = 0, shifted: bool = False, size: int = 48
) -> list[Image.Image]:
    """n small single-cell pictures: a dark violet disc on a pale pink background, each with
    its own position, radius and pixel noise. shifted=True draws them as a very different
    camera and stain might: a pale yellow cell on a dark background."""
    rng = np.random.default_rng(seed)
    if shifted:
        background, cell = np.array([90.0, 70.0, 110.0]), np.array([230.0, 220.0, 150.0])
    else:
        background, cell = np.array([236.0, 206.0, 214.0]), np.array([110.0, 50.0, 150.0])
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(0.4, 0.6, size=2) * size
        radius = rng.uniform(0.22, 0.32) * size
        inside = ((xx - cx) ** 2 + (yy - cy) ** 2 < radius**2)[..., None]
        pixels = np.where(inside, cell, background) + rng.normal(0.0, 12.0, (size, size, 3))
        out.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"))
    return out


def make_guarded_checkpoint(
    path: str | os.PathLike[str],
    classes: list[str],
    *,
    fit_on: Sequence[Image.Image],
    calibrate_on: Sequence[Image.Image],
    sizes: Sequence[int] = (1, 5, 20),
    input_size: int = 32,
    seed: int = 0,
    temperature: float = 1.0,
    threshold: float | None = None,
    taps: Sequence[int] = (),
) -> Path:
    """A tiny checkpoint with a batch guard (`ml.ood`) for pictures like `fit_on` (with `taps`,
    a second guard on those blocks' channel statistics, `OODGuard.early`).

    The random network's BatchNorm statistics are those of `fit_on` (as training would leave
    them: a random network with its initial statistics gives nearly the same features for every
    picture), the guard is fitted on its features of `fit_on` and calibrated on those of
    `calibrate_on`. Pictures like those are in distribution; anything else may be flagged.
    """
    from ml.inference import Classifier  # the model as inference runs it, to fit its features

    torch.manual_seed(seed)
    model = build_model("mobilenet_v2", len(classes), pretrained=None)
    make_tiny_checkpoint(path, classes, input_size=input_size, model=model)
    inputs = Classifier.load(path, device="cpu").preprocess(list(fit_on))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch
    model.train()
    with torch.no_grad():
        model(inputs)
    model.eval()
    make_tiny_checkpoint(path, classes, input_size=input_size, model=model)
    classifier = Classifier.load(path, device="cpu")
    features = classifier.embed(inputs)
    labels = torch.arange(len(features)) % len(classes)
    k = min(8, len(features) - len(classes))
    guard = OODGuard.fit(features, labels, k=k)
    if taps:
        guard.taps = tuple(taps)
        classifier.ood = guard  # its features now carry the tapped blocks' statistics
        tapped = classifier.embed(inputs)[:, features.shape[1] :]
        guard.early = OODGuard.fit(tapped, labels, k=min(k, tapped.shape[1]))
    guard.calibrate(
        [classifier.embed(classifier.preprocess(list(calibrate_on)))], sizes=sizes, seed=seed
    )
    return make_tiny_checkpoint(
        path,
        classes,
        input_size=input_size,
        temperature=temperature,
        threshold=threshold,
        ood=guard.to_dict(),
        model=model,
    )
