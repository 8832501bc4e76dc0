from __future__ import annotations

import numpy as np
from PIL import Image

from ml.data import ImageFolder, grouped_stratified_split, near_duplicate_groups
from ml.transforms import eval_transform
from tests.ml.conftest import blob_image


def test_image_folder_lower_cases_class_names_and_labels_every_file(image_folder):
    ds = ImageFolder(image_folder, eval_transform(32, [0.5] * 3, [0.5] * 3))
    assert ds.classes == ["alpha", "beta", "gamma"]
    assert len(ds) == 18
    x, y = ds[7]
    assert x.shape == (3, 32, 32)
    assert ds.classes[y] == "beta"


def test_split_is_stratified_by_class_and_deterministic_for_a_seed():
    labels = [0] * 100 + [1] * 40 + [2] * 20
    groups = list(range(len(labels)))
    train, val = grouped_stratified_split(labels, groups, 0.25, seed=7)

    assert sorted(train + val) == list(range(len(labels)))
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [25, 10, 5]
    assert grouped_stratified_split(labels, groups, 0.25, seed=7) == (train, val)
    assert grouped_stratified_split(labels, groups, 0.25, seed=8) != (train, val)


def test_grouped_split_never_puts_near_copies_on_both_sides(tmp_path):
    rng = np.random.default_rng(0)
    paths, labels, cell_of = [], [], []
    for cell in range(12):
        base = blob_image(rng, size=48, grid=9)  # detailed enough to tell cells apart
        # Near-copies as in the Kaggle set: rotated, flipped, slightly brightened.
        copies = [
            base,
            base.transpose(Image.Transpose.ROTATE_90),
            base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            Image.eval(base, lambda v: min(255, v + 6)),
        ]
        for k, img in enumerate(copies):
            p = tmp_path / f"c{cell}_{k}.png"
            img.save(p)
            paths.append(p)
            labels.append(cell % 3)
            cell_of.append(cell)

    groups = near_duplicate_groups(paths)
    train, val = grouped_stratified_split(labels, groups, 0.3, seed=0)

    # Every copy of a cell lands in the cell's group, and distinct cells stay apart.
    for cell in range(12):
        assert len({groups[i] for i in range(len(paths)) if cell_of[i] == cell}) == 1
    assert len(set(groups)) == 12
    assert {cell_of[i] for i in train}.isdisjoint({cell_of[i] for i in val})
    assert val


def smear_cell(rng: np.random.Generator, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A 4:3 smear-like frame: pale background, pink red cells, one purple cell off-centre."""
    from PIL import ImageDraw

    w, h = size
    img = Image.new("RGB", size, (235, 225, 228))
    draw = ImageDraw.Draw(img)
    for _ in range(14):
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(5, 9))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(215, 160, 170), outline=(190, 120, 140))
    cx, cy = w // 2 + int(rng.integers(-6, 7)), h // 2 + int(rng.integers(-6, 7))
    for _ in range(3):  # a lobed nucleus
        dx, dy, r = (int(v) for v in rng.integers((-8, -8, 5), (9, 9, 10)))
        draw.ellipse((cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r), fill=(110, 60, 170))
    return img


def kaggle_style_copy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotation by any angle (black corners), a shift and maybe a flip, as in the Kaggle set."""
    out = img.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR)
    dx, dy = rng.integers(-5, 6, size=2)
    out = out.transform(out.size, Image.Transform.AFFINE, (1, 0, int(dx), 0, 1, int(dy)))
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def test_copies_rotated_by_any_angle_and_shifted_never_straddle_the_split(tmp_path):
    rng = np.random.default_rng(1)
    paths, labels, cell_of = [], [], []
    for cell in range(16):
        base = smear_cell(rng)
        for k in range(6):
            p = tmp_path / f"c{cell}_{k}.png"
            (base if k == 0 else kaggle_style_copy(base, rng)).save(p)
            paths.append(p)
            labels.append(cell % 4)
            cell_of.append(cell)

    groups = near_duplicate_groups(paths, labels)

    for cell in range(16):  # all copies of a cell share a group ...
        assert len({groups[i] for i in range(len(paths)) if cell_of[i] == cell}) == 1
    assert len(set(groups)) >= 14  # ... and distinct cells stay apart (16 here)
    # Groups are class-pure when labels are given.
    assert all(len({labels[i] for i in range(len(paths)) if groups[i] == g}) == 1 for g in groups)
    for seed in range(5):
        train, val = grouped_stratified_split(labels, groups, 0.25, seed=seed)
        assert val
        assert {cell_of[i] for i in train}.isdisjoint({cell_of[i] for i in val})
