"""Image transforms shared by training, validation, evaluation and inference.

Single-cell crops are nearly square (PBC: 360x363) with the cell in the middle, so the eval
transform resizes the shorter side and centre-crops: for PBC this keeps the whole image, and for
4:3 sources it keeps the central square without distorting the cell's shape.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

# The geometry (fitting to the input square) is Pillow-only and shared with the portal.
from ml.geometry import (
    CELL_MARGIN,
    RESIZE_MODES,
    crop_to_cell,
    crop_to_stain,
    eval_geometry,
    geometry_key,
    pad_to_square,
    shift_square,
    square_for,
    to_rgb,
)

__all__ = [
    "CELL_MARGIN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESIZE_MODES",
    "RandomRot90",
    "RandomShift",
    "StainJitter",
    "crop_to_cell",
    "crop_to_stain",
    "eval_geometry",
    "eval_transform",
    "geometry_key",
    "pad_to_square",
    "to_input_tensor",
    "train_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    stain: bool = False,
    shift: float = 0.0,
) -> T.Compose:
    """Augmented views for training. stain=True replaces the colour jitter by StainJitter
    (stain, illumination, focus, compression and background colour of other labs), applied to
    the input-size image (cheap) after the geometry. shift > 0 moves the cell off the centre
    by up to that fraction of the side (RandomShift), so the centre of the square is not
    evidence in itself."""
    colour: T.ColorJitter | StainJitter = (
        StainJitter()
        if stain
        else T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03)
    )
    return T.Compose(
        [
            T.Lambda(to_rgb),
            T.Lambda(square_for(resize)),
            # Mild scale/aspect jitter only: the cell must stay in the crop.
            T.RandomResizedCrop(input_size, scale=scale, ratio=(0.9, 1.1), antialias=True),
            *([RandomShift(shift)] if shift > 0 else []),
            # A cell on a slide has no up or left: the 8 rotations/flips of the square are all
            # valid views, and right-angle rotations add no black corners.
            RandomRot90(),
            T.RandomHorizontalFlip(),
            # Staining and illumination differ between labs and scanners.
            colour,
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


class RandomShift(torch.nn.Module):
    """The square's content moved by a random offset of up to `fraction` of the side in each
    direction, the edges filled by the picture mirrored (`ml.geometry.shift_square`)."""

    def __init__(self, fraction: float) -> None:
        super().__init__()
        self.fraction = fraction

    def forward(self, img: Image.Image) -> Image.Image:
        reach = int(self.fraction * min(img.size))
        dy, dx = (random.randint(-reach, reach) for _ in range(2))  # noqa: S311 - augmentation
        return Image.fromarray(shift_square(np.asarray(img), dy, dx, reflect=True))


class RandomRot90(torch.nn.Module):
    def forward(self, img: Image.Image) -> Image.Image:
        k = random.randrange(4)  # noqa: S311 - augmentation, not cryptography
        if k == 0:
            return img
        ops = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
        return img.transpose(ops[k - 1])


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB) in optical density, as in
# scikit-image's rgb2hed. Romanowsky stains are not H&E, but their two dyes (a blue-violet basic
# and a red-pink acidic one) sit close to these axes, so jitter along them mimics stain batches.
_RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)


class StainJitter:
    """Random stain and imaging changes of the kinds that differ between labs.

    In turn, each with its own probability: stain amounts and tints in HED optical-density
    space (scale and shift per dye: Tellez et al. 2018), brightness, gamma, a yellowish or pale
    background (old lamps, thin smears), Gaussian blur (focus) and JPEG compression. Works on
    PIL RGB images; uses Python's `random`, which the training seeds.
    """

    def __init__(
        self,
        *,
        hed_scale: float = 0.25,
        hed_shift: float = 0.04,
        brightness: float = 0.25,
        gamma: float = 0.3,
        p_background: float = 0.4,
        p_blur: float = 0.3,
        p_jpeg: float = 0.4,
    ) -> None:
        self.hed_scale, self.hed_shift = hed_scale, hed_shift
        self.brightness, self.gamma = brightness, gamma
        self.p_background, self.p_blur, self.p_jpeg = p_background, p_blur, p_jpeg

    def __call__(self, img: Image.Image) -> Image.Image:
        rnd = random.random
        a = np.asarray(img.convert("RGB"), dtype=np.float32)
        od = -np.log10(np.clip(a, 1.0, 255.0) / 255.0)
        hed = od.reshape(-1, 3) @ _HED_FROM_RGB
        scale = 1 + self.hed_scale * (2 * np.array([rnd(), rnd(), rnd()], np.float32) - 1)
        shift = self.hed_shift * (2 * np.array([rnd(), rnd(), rnd()], np.float32) - 1)
        od = np.clip((hed * scale + shift) @ _RGB_FROM_HED, 0, None)
        a = 255.0 * np.power(10.0, -od.reshape(a.shape))
        a *= 1 + self.brightness * (2 * rnd() - 1)
        a = 255.0 * np.power(np.clip(a / 255.0, 0, 1), np.exp(self.gamma * (2 * rnd() - 1)))
        if rnd() < self.p_background:
            # Bright pixels (background, pale red cells) take a tint: yellowish or washed out.
            bright = np.clip((a.mean(axis=-1, keepdims=True) - 150.0) / 80.0, 0, 1)
            if rnd() < 0.5:
                tint = np.array([1.0, 0.97 - 0.05 * rnd(), 0.78 + 0.12 * rnd()])
                a = a * (1 - bright) + a * tint * bright
            else:
                a = a + (255.0 - a) * bright * 0.5 * rnd()
        out = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
        if rnd() < self.p_blur:
            out = out.filter(ImageFilter.GaussianBlur(0.4 + 1.2 * rnd()))
        if rnd() < self.p_jpeg:
            buf = io.BytesIO()
            out.save(buf, format="JPEG", quality=int(30 + 60 * rnd()))
            buf.seek(0)
            with Image.open(buf) as jpeg:
                out = jpeg.convert("RGB")
        return out
