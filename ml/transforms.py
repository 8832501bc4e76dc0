"""Image transforms shared by training, validation, evaluation and inference.

Single-cell crops are nearly square (PBC: 360x363) with the cell in the middle, so the eval
transform resizes the shorter side and centre-crops: for PBC this keeps the whole image, and for
4:3 sources it keeps the central square without distorting the cell's shape.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


RESIZE_MODES = ("crop", "pad")


def eval_geometry(input_size: int, resize: str = "crop") -> T.Compose:
    """The PIL part of the eval transform: any image to the model's input_size square, RGB.

    resize="crop": shorter side to input_size, centre crop (PBC: nearly square crops).
    resize="pad": pad to a square with black first, keeping the whole frame (Kaggle: 320x240
    frames whose cell may sit off-centre, and whose rotated copies already have black corners).
    The portal stores each upload fitted by this beside the original, and the worker turns the
    fitted copy into a tensor with to_input_tensor alone: the same tensor as eval_transform
    gives for the original.
    """
    return T.Compose(
        [T.Lambda(_to_rgb), *_square(resize), T.Resize(input_size), T.CenterCrop(input_size)]
    )


def geometry_key(input_size: int, resize: str) -> str:
    """A short name for an eval geometry, e.g. "192-crop": images fitted alike share it."""
    return f"{input_size}-{resize}"


def to_input_tensor(mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """The tensor part of the eval transform, for an image eval_geometry has fitted already."""
    return T.Compose([T.ToTensor(), T.Normalize(list(mean), list(std))])


def eval_transform(
    input_size: int, mean: Sequence[float], std: Sequence[float], resize: str = "crop"
) -> T.Compose:
    return T.Compose([eval_geometry(input_size, resize), to_input_tensor(mean, std)])


def train_transform(
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    scale: tuple[float, float] = (0.75, 1.0),
    resize: str = "crop",
) -> T.Compose:
    return T.Compose(
        [
            T.Lambda(_to_rgb),
            *_square(resize),
            # Mild scale/aspect jitter only: the cell must stay in the crop.
            T.RandomResizedCrop(input_size, scale=scale, ratio=(0.9, 1.1), antialias=True),
            # A cell on a slide has no up or left: the 8 rotations/flips of the square are all
            # valid views, and right-angle rotations add no black corners.
            RandomRot90(),
            T.RandomHorizontalFlip(),
            # Staining and illumination differ between labs and scanners.
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


class RandomRot90(torch.nn.Module):
    def forward(self, img: Image.Image) -> Image.Image:
        k = random.randrange(4)  # noqa: S311 - augmentation, not cryptography
        if k == 0:
            return img
        ops = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
        return img.transpose(ops[k - 1])


def _square(resize: str) -> list[T.Lambda]:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}")
    return [T.Lambda(pad_to_square)] if resize == "pad" else []


def pad_to_square(img: Image.Image) -> Image.Image:
    """Centre img on a black square whose side is its longer side."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")
