from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.checkpoint import load_ood, save_checkpoint
from ml.model import build_model
from ml.ood import OODGuard, auroc, fit_guard, grouped_batch_means


def features(n: int, *, shift: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 64-d features; shift moves every cell along a direction (another lab)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, 64, generator=torch.Generator().manual_seed(99)) * 3
    x = centres[labels] + torch.randn(n, 64, generator=g)
    direction = torch.ones(64) / 8
    return x + shift * direction * 8, labels


def test_shifted_features_score_higher_and_their_batches_are_flagged():
    train_x, train_y = features(600)
    val_x, _ = features(400, seed=1)
    shifted_x, _ = features(400, shift=2.0, seed=2)
    guard = OODGuard.fit(train_x, train_y, k=16)
    guard.calibrate([val_x[:200]], sizes=(1, 20), seed=0)

    inside, outside = guard.cell_scores(val_x[200:]), guard.cell_scores(shifted_x)

    assert outside.mean() > 2 * inside.mean()
    assert auroc(inside.numpy(), outside.numpy()) > 0.95
    assert guard.flags(shifted_x[:20])
    flagged_inside = [guard.flags(val_x[s : s + 20]) for s in range(200, 400, 20)]
    assert sum(flagged_inside) <= 1


def test_the_threshold_of_a_batch_is_that_of_the_largest_calibrated_size_not_above_it():
    guard = OODGuard.fit(*features(300), k=8)
    guard.thresholds = {1: 5.0, 20: 2.0, 100: 1.5}

    assert guard.threshold_for(0) is None
    assert guard.threshold_for(7) == 5.0
    assert guard.threshold_for(20) == 2.0
    assert guard.threshold_for(99) == 2.0
    assert guard.threshold_for(500) == 1.5


def test_the_guard_round_trips_through_the_checkpoint(tmp_path):
    guard = OODGuard.fit(*features(300), k=8)
    guard.calibrate([features(200, seed=3)[0]], sizes=(1, 20))
    path = tmp_path / "m.pt"
    model = build_model("mobilenet_v2", 3, pretrained=None)
    save_checkpoint(
        path,
        model,
        arch="mobilenet_v2",
        classes=["a", "b", "c"],
        input_size=32,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        recipe={},
        metrics={},
        ood=guard.to_dict(),
    )

    loaded = load_ood(path)

    assert loaded is not None
    assert loaded.thresholds == pytest.approx(guard.thresholds)
    x = features(50, shift=0.5, seed=4)[0]
    assert torch.allclose(loaded.cell_scores(x), guard.cell_scores(x))


def test_auroc_counts_ties_as_half():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([2.0, 3.0]), np.array([0.0])) == 0.0


def test_the_classifier_checks_a_batch_with_the_guard_of_its_checkpoint(tmp_path):
    from ml.inference import Classifier
    from ml.testing import make_tiny_checkpoint

    clf = Classifier.load(make_tiny_checkpoint(tmp_path / "t.pt", ["a", "b"]), device="cpu")
    g = torch.Generator().manual_seed(0)
    inside = torch.randn(240, 3, 32, 32, generator=g) * 0.5
    shifted = (
        torch.randn(20, 3, 32, 32, generator=g) * 0.5
        + torch.tensor([2.0, -1.5, 1.0])[:, None, None]
    )
    assert clf.check_batch(inside[:20]) is None  # no guard in this checkpoint
    feats = clf.embed(inside[:200])
    guard = OODGuard.fit(feats, torch.arange(200) % 2, k=8)
    guard.calibrate([feats[:100]], sizes=(1, 20))
    clf.ood = guard

    check_in, check_out = clf.check_batch(inside[200:220]), clf.check_batch(shifted)

    assert check_in is not None
    assert check_out is not None
    assert not check_in.flagged
    assert check_out.flagged
    assert check_out.score > check_in.score
    assert check_out.cells_checked == 20
    # Every cell of the shifted batch is above the per-cell limit, few of the in-lab one.
    assert check_out.odd_cells == list(range(20))
    assert len(check_in.odd_cells) <= 3
    assert check_in.odd_cells == [
        i for i, v in enumerate(check_in.cell_scores) if v > guard.thresholds[1]
    ]
    assert clf.check_batch(inside[:200], max_cells=50).cells_checked == 50  # type: ignore[union-attr]


def test_the_guard_features_move_to_a_faster_engine_only_if_the_scores_stay(tmp_path):
    from ml.inference import Classifier
    from ml.testing import make_guarded_checkpoint, synthetic_cells

    path = make_guarded_checkpoint(
        tmp_path / "g.pt",
        ["a", "b", "c"],
        fit_on=synthetic_cells(60, seed=1),
        calibrate_on=synthetic_cells(40, seed=2),
    )
    clf = Classifier.load(path, device="cpu")
    cells = clf.preprocess(synthetic_cells(20, seed=3))
    away = clf.preprocess(synthetic_cells(20, seed=4, shifted=True))
    eager_in, eager_away = clf.check_batch(cells), clf.check_batch(away)

    assert clf.use_feature_engine("no-such-engine", check=cells[:8]) is not None
    assert clf.feature_engine == "eager"
    assert clf.use_feature_engine("fused-channels-last", check=cells[:8]) is None
    assert clf.feature_engine == "fused-channels-last"
    fast_in, fast_away = clf.check_batch(cells), clf.check_batch(away)

    assert eager_in is not None
    assert fast_in is not None
    assert eager_away is not None
    assert fast_away is not None
    assert fast_in.score == pytest.approx(eager_in.score, rel=1e-3)
    assert fast_away.score == pytest.approx(eager_away.score, rel=1e-3)
    assert (fast_in.flagged, fast_away.flagged) == (False, True)
    assert (eager_in.flagged, eager_away.flagged) == (False, True)


def test_grouped_batches_hold_distinct_groups_while_the_pool_has_enough():
    # Scores equal to the group id: a batch of distinct groups has a known mean range.
    groups = np.repeat(np.arange(10), 5)
    scores = groups.astype(float)
    rng = np.random.default_rng(0)
    means = grouped_batch_means(scores, groups, 10, 50, rng)
    # Ten distinct groups out of ten: every batch is each group once, mean 4.5.
    assert np.allclose(means, 4.5)
    # More cells than groups: drawn with replacement, so the means vary.
    assert grouped_batch_means(scores, groups, 20, 200, rng).std() > 0


def test_a_guard_fitted_and_calibrated_on_held_out_cells_flags_a_shifted_batch():
    train_x, train_y = features(300)
    val_x, _ = features(200, seed=1)
    guard, info = fit_guard(train_x, train_y, val_x, sizes=(1, 20, 100), k=16)
    assert guard is not None
    assert sorted(guard.thresholds) == [1, 20, 100]
    assert info["fitted_on_cells"] == 300
    assert info["calibrated_on_cells"] == 200
    assert guard.flags(features(20, shift=2.0, seed=3)[0])
    assert not guard.flags(features(100, seed=4)[0])


def test_too_few_cells_give_no_guard_and_say_why():
    train_x, train_y = features(6)
    guard, info = fit_guard(train_x, train_y, features(30, seed=1)[0])
    assert guard is None
    assert "too few cells" in info["none_because"]


def test_one_odd_cell_in_a_normal_batch_is_held_while_the_batch_passes():
    train_x, train_y = features(600)
    guard = OODGuard.fit(train_x, train_y, k=16)
    guard.calibrate([features(400, seed=1)[0]], sizes=(1, 20), seed=0)
    batch = features(20, seed=5)[0].clone()
    odd_one = features(1, shift=1.5, seed=6)[0][0]
    batch[7] = odd_one

    scores = guard.cell_scores(batch)

    assert guard.cell_limit == guard.thresholds[1]
    assert not guard.flags(batch)
    assert 7 in guard.odd_cells(batch)
    assert float(scores[7]) > guard.cell_limit
    # About 1 % of in-lab cells are above the limit by construction: few of the other 19.
    assert len(guard.odd_cells(batch)) <= 3


def test_without_a_per_cell_limit_no_cell_is_held():
    guard = OODGuard.fit(*features(300), k=8)
    guard.thresholds = {20: 2.0}

    assert guard.cell_limit is None
    assert guard.odd_cells(features(20, shift=3.0, seed=7)[0]) == []


def test_a_guard_reading_early_blocks_gets_their_statistics_from_the_classifier(tmp_path):
    from ml.inference import Classifier
    from ml.testing import make_guarded_checkpoint, synthetic_cells

    path = make_guarded_checkpoint(
        tmp_path / "g.pt",
        ["a", "b", "c"],
        fit_on=synthetic_cells(60, seed=1),
        calibrate_on=synthetic_cells(40, seed=2),
        taps=(3, 6),
    )
    clf = Classifier.load(path, device="cpu")
    cells = clf.preprocess(synthetic_cells(20, seed=3))
    away = clf.preprocess(synthetic_cells(20, seed=4, shifted=True))

    guard = load_ood(path)
    feats = clf.embed(cells)
    pooled_width = guard.mean.shape[0]  # type: ignore[union-attr]
    check_in, check_away = clf.check_batch(cells), clf.check_batch(away)

    assert guard is not None
    assert guard.taps == (3, 6)
    assert guard.early is not None
    # Pooled features, then the mean and standard deviation of each channel of blocks 3 and 6
    # (MobileNetV2: 24 and 32 channels).
    assert feats.shape[1] == pooled_width + 2 * (24 + 32)
    assert torch.allclose(
        guard.cell_scores(feats),
        OODGuard.from_dict({**guard.to_dict(), "early": None}).cell_scores(feats)
        + guard.early.cell_scores(feats[:, pooled_width:]),
    )
    assert check_in is not None
    assert check_away is not None
    assert not check_in.flagged
    assert check_away.flagged
    # A faster engine computes the same tapped features, or the guard stays on eager.
    assert clf.use_feature_engine("fused-channels-last", check=cells[:8]) is None
    fast_in = clf.check_batch(cells)
    assert fast_in is not None
    assert fast_in.score == pytest.approx(check_in.score, rel=1e-3)
