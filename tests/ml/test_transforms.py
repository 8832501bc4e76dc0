from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ml.transforms import (
    CELL_MARGIN,
    RandomShift,
    StainJitter,
    eval_geometry,
    train_transform,
)

PINK, VIOLET = (225, 160, 175), (110, 50, 160)


def smear(width, height, centre, diameter):
    """A pink field with red cells and one violet (stained) white cell of `diameter` pixels."""
    img = Image.new("RGB", (width, height), (235, 225, 220))
    draw = ImageDraw.Draw(img)
    rng = random.Random(width * 7 + height)
    for _ in range(12):  # red cells: pink, unstained
        x, y = rng.randrange(width), rng.randrange(height)
        r = diameter // 3
        draw.ellipse((x - r, y - r, x + r, y + r), fill=PINK)
    cx, cy = centre
    half = diameter / 2
    draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=VIOLET)
    return img


def stained_diameter(img: Image.Image) -> float:
    a = np.asarray(img, dtype=np.int16)
    stained = (a[..., 2] - a[..., 1]) >= 40
    return 2 * float(np.sqrt(stained.sum() / np.pi))


@pytest.mark.parametrize(
    ("frame", "centre", "diameter"),
    [
        ((360, 363), (180, 181), 150),  # PBC-like: big cell, centred
        ((320, 240), (90, 160), 60),  # Kaggle-like frame, off-centre, smaller
        ((640, 480), (500, 120), 40),  # a whole field at low magnification
    ],
)
def test_cell_scale_crop_puts_the_stained_cell_at_the_set_size(frame, centre, diameter):
    size = 96

    out = eval_geometry(size, "cell")(smear(frame[0], frame[1], centre, diameter))

    assert out.size == (size, size)
    assert stained_diameter(out) == pytest.approx(size / CELL_MARGIN, rel=0.08)
    # and centred
    a = np.asarray(out, dtype=np.int16)
    ys, xs = np.nonzero((a[..., 2] - a[..., 1]) >= 40)
    assert abs(xs.mean() - size / 2) < 3
    assert abs(ys.mean() - size / 2) < 3


def test_stain_jitter_changes_colours_but_not_the_picture_and_is_seeded():
    img = smear(120, 100, (60, 50), 40)
    jitter = StainJitter(p_blur=0.0, p_jpeg=0.0)

    random.seed(3)
    first = jitter(img)
    random.seed(3)
    again = jitter(img)
    others = [jitter(img) for _ in range(5)]

    assert first.size == img.size
    assert np.array_equal(np.asarray(first), np.asarray(again))
    diffs = [np.abs(np.asarray(o, float) - np.asarray(img, float)).mean() for o in others]
    assert min(diffs) > 0.5
    # The white cell stays the most stained (violet) region.
    a = np.asarray(first, dtype=np.int16)
    assert a[50, 60, 2] - a[50, 60, 1] > a[5, 5, 2] - a[5, 5, 1]


def test_stain_jitter_without_changes_returns_the_same_colours():
    img = smear(60, 50, (30, 25), 20)
    identity = StainJitter(
        hed_scale=0.0, hed_shift=0.0, brightness=0.0, gamma=0.0, p_background=0, p_blur=0, p_jpeg=0
    )

    out = identity(img)

    assert np.abs(np.asarray(out, int) - np.asarray(img, int)).max() <= 1


def test_training_transform_with_stain_jitter_gives_tensors_of_the_input_size():
    t = train_transform(48, (0.5,) * 3, (0.25,) * 3, resize="cell", stain=True)

    x = t(smear(320, 240, (100, 120), 50))

    assert tuple(x.shape) == (3, 48, 48)


def test_random_shift_moves_the_cell_within_its_reach_and_keeps_the_size() -> None:
    random.seed(0)
    picture = Image.new("RGB", (40, 40), (230, 200, 205))
    ImageDraw.Draw(picture).ellipse((16, 16, 24, 24), fill=(90, 40, 150))
    centres = []
    for _ in range(30):
        moved = np.asarray(RandomShift(0.25)(picture))
        assert moved.shape == (40, 40, 3)
        ys, xs = np.nonzero(moved[..., 2].astype(int) - moved[..., 1].astype(int) > 60)
        centres.append((ys.mean() - 20, xs.mean() - 20))
    offsets = np.abs(np.array(centres))
    assert offsets.max() <= 10.5  # a quarter of the side, and the blob's half pixel
    assert offsets.max() > 3  # it does move


def test_training_views_with_a_shift_are_tensors_of_the_input_size() -> None:
    aug = train_transform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), shift=0.25)
    assert tuple(aug(Image.new("RGB", (50, 48), (200, 90, 150))).shape) == (3, 32, 32)
