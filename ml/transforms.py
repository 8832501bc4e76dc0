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


def eval_transform(input_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    return T.Compose(
        [
            T.Lambda(_to_rgb),
            T.Resize(input_size),
            T.CenterCrop(input_size),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def train_transform(
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    scale: tuple[float, float] = (0.75, 1.0),
) -> T.Compose:
    return T.Compose(
        [
            T.Lambda(_to_rgb),
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


def _to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")
