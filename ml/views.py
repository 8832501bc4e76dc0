"""Test-time views: the dihedral flips and rotations of the input square (a cell on a slide
has no up or left). `view` turns a picture, `view_batch` a preprocessed N x 3 x S x S batch
the same way (the per-channel normalisation commutes with moving pixels, so both give the same
tensor, bit for bit). `ml.adapt` trains heads on every view; `ml.inference.Classifier` averages
a checkpoint's `views`' logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import torch
from PIL import Image

VIEWS: Final = ("identity", "flip", "rot90", "transpose")
_TRANSPOSE = {
    "flip": Image.Transpose.FLIP_LEFT_RIGHT,
    "rot90": Image.Transpose.ROTATE_90,
    "transpose": Image.Transpose.TRANSPOSE,
}


def check_views(names: Sequence[str]) -> tuple[str, ...]:
    """names as a tuple, each one of VIEWS, none twice, at least one."""
    out = tuple(str(n) for n in names)
    unknown = [n for n in out if n not in VIEWS]
    if unknown or not out or len(set(out)) != len(out):
        raise ValueError(f"views {list(out)}: want distinct names from {list(VIEWS)}")
    return out


def view(img: Image.Image, name: str) -> Image.Image:
    """One of VIEWS of a picture."""
    if name == "identity":
        return img
    if name not in _TRANSPOSE:
        raise ValueError(f"unknown view {name!r}; one of {VIEWS}")
    return img.transpose(_TRANSPOSE[name])


def view_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    """One of VIEWS of every picture of an N x C x H x W batch (H = W): what `view` does to a
    picture, on its tensor (PIL's ROTATE_90 is counter-clockwise, as torch.rot90 from the
    height axis towards the width axis)."""
    if name == "identity":
        return x
    if name == "flip":
        return torch.flip(x, dims=(3,))
    if name == "rot90":
        return torch.rot90(x, 1, dims=(2, 3))
    if name == "transpose":
        return x.transpose(2, 3)
    raise ValueError(f"unknown view {name!r}; one of {VIEWS}")
