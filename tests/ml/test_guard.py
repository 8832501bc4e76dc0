from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ml.guard import SHIFTS, bootstrap, halves, measure
from ml.ood import grouped_thresholds
from tests.ml.conftest import blob_image


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_each_synthetic_shift_changes_the_picture_and_keeps_its_size(name: str) -> None:
    picture = blob_image(np.random.default_rng(0), size=64)
    shifted = SHIFTS[name](picture, np.random.default_rng(1))
    assert shifted.size == picture.size
    assert shifted.mode == "RGB"
    change = np.abs(np.asarray(shifted, float) - np.asarray(picture, float)).mean()
    assert change > 1.0


def test_the_val_halves_keep_every_group_on_one_side() -> None:
    groups = np.repeat(np.arange(20), 3)
    first, second = halves(groups, seed=0)
    assert sorted([*first, *second]) == list(range(60))
    assert not set(groups[first]) & set(groups[second])
    assert len(set(groups[first])) == 10


def test_false_alarms_stay_near_the_quantile_and_a_shifted_pool_is_detected() -> None:
    rng = np.random.default_rng(0)
    scores = rng.gamma(4.0, 0.25, size=2000)  # in-lab cell scores, mean 1
    groups = np.arange(2000)
    away = {"shifted": (scores[:500] + 1.0, groups[:500])}
    report = measure((scores, groups), away, sizes=[20], quantile=0.99, draws=2000, seed=0)
    mean = report["mean"]["batch_20"]
    assert mean["false_alarm"] < 0.03
    assert mean["shifted"] == 1.0
    interval = bootstrap(scores, groups, [20], quantile=0.99, draws=2000, times=20, seed=0)[
        "batch_20"
    ]
    limit = grouped_thresholds(scores, groups, [20], rng=np.random.default_rng(0))[20]
    assert interval["p2.5"] <= limit <= interval["p97.5"]


def test_a_shift_of_a_real_size_picture_is_deterministic_for_a_seed() -> None:
    picture = Image.new("RGB", (120, 90), (200, 150, 180))
    a = SHIFTS["noise"](picture, np.random.default_rng(3))
    b = SHIFTS["noise"](picture, np.random.default_rng(3))
    assert np.array_equal(np.asarray(a), np.asarray(b))
