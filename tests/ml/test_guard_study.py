from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.guard_study import DESIGNS, Pool, run_fold, split_groups
from ml.sources import Cell

CLASSES = ["a", "b", "c"]


def pool(name: str, lab: str, n: int, *, shift: float, seed: int, **kw: bool) -> Pool:
    """n cells of three classes with pooled (48-d), early and mid (16-d) features; a lab's
    shift moves every feature set along its own direction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, 48, generator=torch.Generator().manual_seed(99)) * 3
    x = {
        "pooled": centres[labels] + torch.randn(n, 48, generator=g) + shift,
        "early": torch.randn(n, 16, generator=g) + shift,
        "mid": torch.randn(n, 16, generator=g) + shift,
    }
    cells = [
        Cell(Path(f"{name}/{i}.jpg"), CLASSES[int(y)], name, f"{name}:{i}")
        for i, y in enumerate(labels)
    ]
    return Pool(name, lab, cells, x, **kw)


def study_args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"seed": 0, "sizes": [1, 20], "quantile": 0.99, "draws": 300, **kw})


# A two-sample statistic of the batch against the fitting cells needs a larger shift than the
# mean cell score to notice it at 20 cells (measured: 2 % of batches at 0.6, 100 % at 1.5).
@pytest.mark.parametrize(
    ("design", "shift"),
    [
        ("pooled mahalanobis k32 (shipped)", 0.6),
        ("pooled + early", 0.6),
        ("pooled knn k10", 0.6),
        ("pooled k32, batch MMD", 1.5),
        ("pooled k32, batch energy distance", 1.5),
    ],
)
def test_a_fold_flags_the_left_out_lab_and_few_in_lab_batches(design, shift):
    pools = [
        pool("train", "home", 300, shift=0.0, seed=1, seen=True),
        pool("val", "home", 300, shift=0.0, seed=2),
        pool("other", "away", 200, shift=shift, seed=3),
    ]

    result = run_fold(DESIGNS[design], pools, "away", CLASSES, study_args())

    batch = result["batch_20"]
    assert result["fitted_on"] == 300
    assert result["calibrated_on"]["val"][0] + result["tested_on"]["val"][0] == 300
    assert batch["detected"]["other"] > 0.95
    assert batch["auroc"]["other"] > 0.95
    assert batch["false_alarm"]["val"] < 0.05
    # A single cell is judged by the per-cell limit, far less sure than a batch of 20.
    if shift < 1:
        assert result["batch_1"]["detected"]["other"] < batch["detected"]["other"]


def test_a_lab_the_model_never_saw_fits_on_half_its_groups_and_bootstraps_intervals():
    pools = [
        pool("train", "home", 150, shift=0.0, seed=1, seen=True),
        pool("val", "home", 150, shift=0.0, seed=2),
        pool("other", "away", 400, shift=1.5, seed=3),
    ]

    result = run_fold(
        DESIGNS["pooled mahalanobis k16"], pools, "home", CLASSES, study_args(), bootstrap=20
    )

    assert result["fitted_on"] == 200  # half of the away lab's 400 cells; none of "home"
    assert result["calibrated_on"]["other"][0] == 100
    assert result["batch_20"]["detected"]["val"] > 0.95
    low, high = result["bootstrap"]["batch_20"]["threshold"]
    assert low <= result["batch_20"]["threshold"][0] <= high
    assert result["bootstrap"]["times"] == 20


def test_groups_never_straddle_the_sides():
    groups = np.repeat(np.arange(40), 3)

    sides = split_groups(groups, (2, 1, 1), seed=0)

    assert sorted(np.concatenate(sides).tolist()) == list(range(120))
    seen = [set(groups[s].tolist()) for s in sides]
    assert not seen[0] & seen[1]
    assert not seen[0] & seen[2]
    assert not seen[1] & seen[2]
    assert [len(s) for s in seen] == [20, 10, 10]


def test_the_report_tables_give_every_pool_per_design_fold_and_batch_size():
    from ml.guard_report import study_markdown

    pools = [
        pool("train", "home", 150, shift=0.0, seed=1, seen=True),
        pool("val", "home", 150, shift=0.0, seed=2),
        pool("other", "away", 150, shift=1.5, seed=3),
    ]
    designs = {
        d: {
            f"without {lab}": run_fold(DESIGNS[d], pools, lab, CLASSES, study_args(), bootstrap=5)
            for lab in ("away", "home")
        }
        for d in ("pooled mahalanobis k16", "early mahalanobis k32")
    }

    text = study_markdown({"designs": designs})

    fold = designs["pooled mahalanobis k16"]["without away"]
    assert "Guard fitted without away" in text
    assert "Guard fitted without home" in text
    assert "| val false alarms | other flagged |" in text
    alarms, rate = fold["batch_20"]["false_alarm"]["val"], fold["batch_20"]["detected"]["other"]
    assert f"| pooled mahalanobis k16 | 20 | {100 * alarms:.1f}% | {100 * rate:.1f}% |" in text
    assert text.count("| early mahalanobis k32 | without home |") == 2  # bootstrap, sizes 1, 20
