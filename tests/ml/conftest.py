from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["alpha", "beta", "gamma"]


def blob_image(rng: np.random.Generator, size: int = 40, grid: int = 5) -> Image.Image:
    """A smooth random RGB image (upsampled noise), so small edits keep its perceptual hash."""
    small = rng.integers(0, 256, size=(grid, grid, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/<Class>/*.png with 6 images per class; folder names in mixed case on purpose."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cells"
    for c in CLASSES:
        d = root / c.capitalize()
        d.mkdir(parents=True)
        for i in range(6):
            blob_image(rng).save(d / f"{c}{i}.png")
    return root
