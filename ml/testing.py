"""Test helpers importable by any test suite (the portal's worker tests use these)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ml.checkpoint import save_checkpoint
from ml.model import build_model
from ml.transforms import IMAGENET_MEAN, IMAGENET_STD


def make_tiny_checkpoint(
    path: str | os.PathLike[str],
    classes: list[str],
    *,
    input_size: int = 32,
    seed: int = 0,
    resize: str = "crop",
) -> Path:
    """Save a randomly initialised mobilenet_v2 checkpoint for `classes`; returns its path."""
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
    )
    return Path(path)
