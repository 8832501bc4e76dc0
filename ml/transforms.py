"""Image transforms shared by training, validation, evaluation and inference.

Single-cell crops are nearly square (PBC: 360x363) with the cell in the middle, so the eval
transform resizes the shorter side and centre-crops: for PBC this keeps the whole image, and for
4:3 sources it keeps the central square without distorting the cell's shape.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


RESIZE_MODES = ("crop", "pad", "stain")


def eval_geometry(input_size: int, resize: str = "crop") -> T.Compose:
    """The PIL part of the eval transform: any image to the model's input_size square, RGB.

    resize="crop": shorter side to input_size, centre crop (PBC: nearly square crops).
    resize="pad": pad to a square with black first, keeping the whole frame (Kaggle: 320x240
    frames whose cell may sit off-centre, and whose rotated copies already have black corners).
    resize="stain": a square around the most strongly stained region first (crop_to_stain): the
    white cell centred and at one scale, whatever the framing of the source.
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
    if resize == "pad":
        return [T.Lambda(pad_to_square)]
    if resize == "stain":
        return [T.Lambda(crop_to_stain)]
    return []


# crop_to_stain: a pixel is "stained" when blue exceeds green by this much (0-255 scale). With
# Romanowsky stains (May-Grünwald Giemsa, Wright) white-cell nuclei and granules are violet (blue
# well above green); red cells are pink and the background pale (blue close to green).
STAIN_MIN_BLUE_OVER_GREEN = 40
STAIN_MIN_PIXELS = 0.002  # fewer stained pixels than this fraction: no cell found, keep all
STAIN_REACH = 0.3  # stained pixels this far (fraction of the shorter side) from the peak count
STAIN_MARGIN = 1.5  # crop side over the stained region's extent: keep the cytoplasm around it
STAIN_MIN_SIDE = 0.4  # the crop is never smaller than this fraction of the shorter side


def crop_to_stain(img: Image.Image) -> Image.Image:
    """A square centred on the densest stained (violet) region: the white cell, at a scale set
    by the cell rather than by the framing of the picture.

    The peak of the blurred stain mask finds the cell even beside a platelet or a second, partly
    cut cell; the stained pixels within reach of it give its extent. Falls back to pad_to_square
    when too little is stained; outside the frame is black, as pad_to_square makes it.
    """
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    height, width = rgb.shape[:2]
    stained = (rgb[..., 2] - rgb[..., 1]) >= STAIN_MIN_BLUE_OVER_GREEN
    if stained.sum() < STAIN_MIN_PIXELS * height * width:
        return pad_to_square(img)
    short = min(width, height)
    mask = Image.fromarray(stained.astype(np.uint8) * 255)
    density = np.asarray(mask.filter(ImageFilter.BoxBlur(max(1, short // 12))))
    peak_y, peak_x = np.unravel_index(int(np.argmax(density)), density.shape)
    reach = STAIN_REACH * short
    ys, xs = np.nonzero(stained)
    near = (np.abs(xs - peak_x) <= reach) & (np.abs(ys - peak_y) <= reach)
    xs, ys = xs[near], ys[near]
    # Percentiles, not min/max: a few stray stained pixels must not stretch the box.
    x0, x1 = np.percentile(xs, (2, 98))
    y0, y1 = np.percentile(ys, (2, 98))
    side = max(x1 - x0, y1 - y0) * STAIN_MARGIN
    side = round(min(max(side, STAIN_MIN_SIDE * short), max(width, height)))
    left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
    return img.crop((left, top, left + side, top + side))


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
