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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


RESIZE_MODES = ("crop", "pad", "stain", "cell")


def eval_geometry(input_size: int, resize: str = "crop") -> T.Compose:
    """The PIL part of the eval transform: any image to the model's input_size square, RGB.

    resize="crop": shorter side to input_size, centre crop (PBC: nearly square crops).
    resize="pad": pad to a square with black first, keeping the whole frame (Kaggle: 320x240
    frames whose cell may sit off-centre, and whose rotated copies already have black corners).
    resize="stain": a square around the most strongly stained region first (crop_to_stain): the
    white cell centred and at one scale, whatever the framing of the source.
    resize="cell": as "stain", but the stained cell always ends at the same size in the input
    (crop_to_cell: its extent is 1 / CELL_MARGIN of the side), whatever the magnification.
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
    stain: bool = False,
) -> T.Compose:
    """Augmented views for training. stain=True replaces the colour jitter by StainJitter
    (stain, illumination, focus, compression and background colour of other labs), applied to
    the input-size image (cheap) after the geometry."""
    colour: T.ColorJitter | StainJitter = (
        StainJitter()
        if stain
        else T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03)
    )
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
            colour,
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
    if resize == "cell":
        return [T.Lambda(crop_to_cell)]
    return []


# crop_to_stain: a pixel is "stained" when blue exceeds green by this much (0-255 scale). With
# Romanowsky stains (May-Grünwald Giemsa, Wright) white-cell nuclei and granules are violet (blue
# well above green); red cells are pink and the background pale (blue close to green).
STAIN_MIN_BLUE_OVER_GREEN = 40
STAIN_MIN_PIXELS = 0.002  # fewer stained pixels than this fraction: no cell found, keep all
STAIN_REACH = 0.3  # stained pixels this far (fraction of the shorter side) from the peak count
STAIN_MARGIN = 1.5  # crop side over the stained region's extent: keep the cytoplasm around it
STAIN_MIN_SIDE = 0.4  # the crop is never smaller than this fraction of the shorter side


def _stained_box(img: Image.Image) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) of the densest stained (violet) region, or None when too little is
    stained to find a cell.

    The peak of the blurred stain mask finds the cell even beside a platelet or a second, partly
    cut cell; the stained pixels within reach of it give its extent (2nd-98th percentiles, so a
    few stray stained pixels do not stretch the box).
    """
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    height, width = rgb.shape[:2]
    stained = (rgb[..., 2] - rgb[..., 1]) >= STAIN_MIN_BLUE_OVER_GREEN
    if stained.sum() < STAIN_MIN_PIXELS * height * width:
        return None
    short = min(width, height)
    mask = Image.fromarray(stained.astype(np.uint8) * 255)
    density = np.asarray(mask.filter(ImageFilter.BoxBlur(max(1, short // 12))))
    peak_y, peak_x = np.unravel_index(int(np.argmax(density)), density.shape)
    reach = STAIN_REACH * short
    ys, xs = np.nonzero(stained)
    near = (np.abs(xs - peak_x) <= reach) & (np.abs(ys - peak_y) <= reach)
    xs, ys = xs[near], ys[near]
    x0, x1 = np.percentile(xs, (2, 98))
    y0, y1 = np.percentile(ys, (2, 98))
    return float(x0), float(y0), float(x1), float(y1)


def crop_to_stain(img: Image.Image) -> Image.Image:
    """A square centred on the densest stained (violet) region: the white cell, at a scale set
    by the cell rather than by the framing of the picture.

    Falls back to pad_to_square when too little is stained; outside the frame is black, as
    pad_to_square makes it. The square is never smaller than STAIN_MIN_SIDE of the shorter side.
    """
    box = _stained_box(img)
    if box is None:
        return pad_to_square(img)
    x0, y0, x1, y1 = box
    width, height = img.size
    side = max(x1 - x0, y1 - y0) * STAIN_MARGIN
    side = round(min(max(side, STAIN_MIN_SIDE * min(width, height)), max(width, height)))
    left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
    return img.crop((left, top, left + side, top + side))


# crop_to_cell: the crop's side is CELL_SIDE_OVER_SPREAD times the spread (2nd-98th percentile
# extent) of the stained pixels. A disk's spread is DISK_SPREAD of its diameter, so a round cell
# of diameter d gets a side of CELL_MARGIN * d and, after resizing, spans input_size / CELL_MARGIN
# pixels (about 70% of the side) whatever the camera's magnification.
CELL_SIDE_OVER_SPREAD = 1.6
DISK_SPREAD = 0.896
CELL_MARGIN = CELL_SIDE_OVER_SPREAD * DISK_SPREAD
CELL_MIN_SIDE = 16  # pixels: a crop never smaller than this (a lone speck of stain)


def crop_to_cell(img: Image.Image) -> Image.Image:
    """A square around the stained cell whose side is CELL_MARGIN times the cell's diameter:
    the cell-scale crop. Unlike crop_to_stain it has no floor tied to the frame, so a cell
    photographed at twice the magnification ends at the same size. Falls back to
    pad_to_square when no cell is found."""
    box = _stained_box(img)
    if box is None:
        return pad_to_square(img)
    x0, y0, x1, y1 = box
    side = round(max(max(x1 - x0, y1 - y0) * CELL_SIDE_OVER_SPREAD, CELL_MIN_SIDE))
    left, top = round((x0 + x1 - side) / 2), round((y0 + y1 - side) / 2)
    return img.crop((left, top, left + side, top + side))


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
