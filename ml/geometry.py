"""Fitting an image to a model's input square: Pillow and NumPy only, no PyTorch.

The portal fits every upload to its model's geometry (a small copy the worker reads), and the
portal's process must stay free of PyTorch; training and inference use the same functions
through `ml.transforms`. `fit_to_square` reproduces torchvision's `Resize(size)` followed by
`CenterCrop(size)` on PIL images exactly (bilinear, Pillow's antialiasing, the same rounding):
a test compares the two pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

RESIZE_MODES = ("crop", "pad", "stain", "cell")

Fit = Callable[[Image.Image], Image.Image]


def eval_geometry(input_size: int, resize: str = "crop") -> Fit:
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
    square = square_for(resize)

    def fit(img: Image.Image) -> Image.Image:
        return fit_to_square(square(to_rgb(img)), input_size)

    return fit


def geometry_key(input_size: int, resize: str) -> str:
    """A short name for an eval geometry, e.g. "192-crop": images fitted alike share it."""
    return f"{input_size}-{resize}"


def fit_to_square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size` (bilinear), then the central `size` square: torchvision's
    Resize(size) + CenterCrop(size) for PIL images, without torchvision."""
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))


def square_for(resize: str) -> Fit:
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}")
    if resize == "pad":
        return pad_to_square
    if resize == "stain":
        return crop_to_stain
    if resize == "cell":
        return crop_to_cell
    return _unchanged


def _unchanged(img: Image.Image) -> Image.Image:
    return img


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


def pad_to_square(img: Image.Image) -> Image.Image:
    """Centre img on a black square whose side is its longer side."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def shift_square(array: np.ndarray, dy: int, dx: int, *, reflect: bool) -> np.ndarray:
    """A square's content moved down by dy and right by dx pixels (|dy|, |dx| < the side),
    the same size. What comes in at the edges is the picture mirrored (reflect=True: slide
    background of the same kind, no black bars for a model to read), or zeros (a mask)."""
    size = array.shape[0]
    width = [(size, size), (size, size)] + [(0, 0)] * (array.ndim - 2)
    padded = np.pad(array, width, mode="reflect") if reflect else np.pad(array, width)
    return np.asarray(padded[size - dy : 2 * size - dy, size - dx : 2 * size - dx])
