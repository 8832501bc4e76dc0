from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ml.adapt import (
    Tail,
    cells_needed,
    clopper_pearson_lower,
    conservative_threshold,
    empirical_threshold,
    fine_tune_tail,
    logistic_head,
    prefix,
    prototype_head,
    recalibrate_batchnorm,
    shift_activations,
)
from ml.adapt_study import (
    cross_lab_thresholds,
    draw_reviewed,
    kaggle_cells,
    out_of_fold,
    split_lab,
)
from ml.sources import Cell
from ml.stain import StainStats, reinhard
from ml.views import view


def tiny_network() -> nn.Sequential:
    """Convolution, BatchNorm, pooled linear head: the layers BN adaptation touches."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def test_batchnorm_statistics_from_a_shifted_batch_change_its_predictions():
    model = tiny_network()
    torch.manual_seed(1)
    shifted = torch.randn(16, 3, 12, 12) * 3 + 2
    before = model(shifted).detach()
    adapted = recalibrate_batchnorm(model, [shifted[:8], shifted[8:]])
    after = adapted(shifted).detach()
    assert not torch.allclose(before, after, atol=1e-3)
    # The first BN layer now centres the shifted batch's channels on its bias (beta).
    normalised = adapted[1](adapted[0](shifted))
    assert (normalised.mean(dim=(0, 2, 3)) - adapted[1].bias).abs().max() < 1e-4
    trained = model[1](model[0](shifted))
    assert (trained.mean(dim=(0, 2, 3)) - model[1].bias).abs().max() > 0.1
    # The model it was given is untouched.
    assert torch.allclose(model(shifted).detach(), before)


def test_batchnorm_source_weight_one_keeps_the_trained_statistics():
    model = tiny_network()
    shifted = torch.randn(8, 3, 12, 12) * 3 + 2
    same = recalibrate_batchnorm(model, [shifted], source_weight=1.0)
    assert torch.allclose(same(shifted), model(shifted), atol=1e-5)


def test_batchnorm_needs_a_batch_of_two_cells():
    with pytest.raises(ValueError, match="two cells"):
        recalibrate_batchnorm(tiny_network(), [torch.randn(1, 3, 32, 32)])


def _stained(rng: np.random.Generator, base: tuple[int, int, int], spread: float) -> Image.Image:
    a = np.array(base, np.float32) + rng.normal(0, spread, (48, 48, 3))
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))


def test_reinhard_gives_a_pictures_colours_the_target_stains_mean_and_spread():
    rng = np.random.default_rng(0)
    lab_pictures = [_stained(rng, (200, 170, 120), 12) for _ in range(3)]  # yellowish
    training = [_stained(rng, (190, 140, 200), 25) for _ in range(3)]  # violet-pink
    source, target = StainStats.of(lab_pictures), StainStats.of(training)
    mapped = StainStats.of(reinhard(p, source=source, target=target) for p in lab_pictures)
    assert np.allclose(mapped.mean, target.mean, atol=0.01)
    assert np.allclose(mapped.std, target.std, rtol=0.1)
    assert not np.allclose(source.mean, target.mean, atol=0.05)  # there was a shift to undo


def test_views_are_the_squares_flips_and_rotations():
    img = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert np.array_equal(np.asarray(view(img, "flip")), np.asarray(img)[:, ::-1])
    assert view(img, "identity") is img
    with pytest.raises(ValueError, match="unknown view"):
        view(img, "upside")


def test_prototype_head_predicts_the_nearest_reviewed_class_and_only_those():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (2, 16))
    x = torch.tensor(np.concatenate([c + 0.1 * rng.normal(0, 1, (5, 16)) for c in centres]))
    y = torch.tensor([0] * 5 + [2] * 5)  # class 1 was never reviewed
    head = prototype_head(x.float(), y, num_classes=3)
    probe = torch.tensor(centres + 0.1 * rng.normal(0, 1, centres.shape)).float()
    assert head.probabilities(probe).argmax(1).tolist() == [0, 2]
    assert head.probabilities(probe)[:, 1].max() == 0


def test_logistic_head_learns_the_reviewed_cells_and_stays_near_the_trained_weights():
    torch.manual_seed(0)
    x = torch.randn(40, 8)
    y = (x[:, 0] > 0).long()
    w0, b0 = torch.zeros(3, 8), torch.zeros(3)
    fitted = logistic_head(x, y, init_weight=w0, init_bias=b0, anchor=1e-3)
    assert (fitted.probabilities(x).argmax(1) == y).float().mean() >= 0.95
    pinned = logistic_head(x, y, init_weight=w0, init_bias=b0, anchor=1e3)
    assert (pinned.weight - w0).abs().max() < 0.01
    assert fitted.probabilities(x)[:, 2].max() == 0  # class 2 has no reviewed cell


def test_clopper_pearson_bound_and_the_cells_a_99_percent_claim_needs():
    assert cells_needed(0.99, alpha=0.05) == 299
    assert clopper_pearson_lower(299, 299) == pytest.approx(0.05 ** (1 / 299))
    assert clopper_pearson_lower(298, 298) < 0.99
    assert clopper_pearson_lower(0, 10) == 0.0


def test_threshold_is_none_with_too_few_held_out_cells_even_all_right():
    conf = np.linspace(0.5, 1.0, 200)
    fit = conservative_threshold(conf, [True] * 200)
    assert fit.threshold is None
    assert fit.cells == 200
    assert fit.none_because is not None
    assert "299" in fit.none_because
    # The plain empirical rule would accept every cell on the same evidence.
    assert empirical_threshold(conf, [True] * 200) == pytest.approx(0.5)


def test_threshold_rests_on_enough_right_cells_and_stops_below_the_errors():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 600)
    right = conf > 0.7  # every cell below 0.7 is wrong
    fit = conservative_threshold(conf, right)
    assert fit.threshold is not None
    assert fit.threshold > 0.7
    assert fit.above >= 299
    assert fit.right_above == fit.above
    assert fit.lower_bound is not None
    assert fit.lower_bound >= 0.99


def test_threshold_is_rarely_claimed_when_no_threshold_is_99_percent_right():
    """98 % right whatever the confidence: any threshold it returns is a false claim, which a
    95 % bound may make at most about 5 % of the time; the empirical rule makes it far more."""
    rng = np.random.default_rng(1)
    claims = empirical_claims = 0
    runs = 100
    for _ in range(runs):
        conf = rng.uniform(0.5, 1.0, 400)
        right = rng.uniform(0, 1, 400) < 0.98
        claims += conservative_threshold(conf, right).threshold is not None
        empirical_claims += empirical_threshold(conf, right) is not None
    assert claims / runs <= 0.08
    assert empirical_claims / runs > 0.5


def _cells(counts: dict[str, int]) -> list[Cell]:
    return [
        Cell(Path(f"{label}{i}.png"), label, "lab", f"{label}{i}")
        for label, n in counts.items()
        for i in range(n)
    ]


def test_reviewed_cells_are_drawn_from_the_pool_never_from_the_test_cells():
    cells = _cells({"a": 40, "b": 12})
    test, pool = split_lab(cells, seed=0)
    assert not set(test) & set(pool)
    assert len(test) + len(pool) == len(cells)
    assert sum(cells[i].label == "b" for i in test) == 5  # at least 5 a class to test on
    reviewed, drawn = draw_reviewed(cells, pool, 10, seed=3)
    assert set(reviewed) <= set(pool)
    assert drawn == {"a": 10, "b": 7}  # b's pool holds only 7


def test_kaggle_copies_of_one_cell_count_once(tmp_path: Path):
    for name in ("_0_10.jpeg", "_0_11.jpeg", "_1_10.jpeg"):
        folder = tmp_path / "MONOCYTE"
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(folder / name)
    cells = kaggle_cells(tmp_path, ["monocyte"])
    assert sorted(c.group for c in cells) == ["kaggle:monocyte:0", "kaggle:monocyte:1"]


def test_cross_lab_threshold_comes_from_the_other_labs_cells_only():
    rng = np.random.default_rng(0)
    method: dict[str, Any] = {"variant": "plain", "views": 1, "head": "proto", "n": 10, "seed": 0}
    rows: list[dict[str, Any]] = [{"lab": lab, **method} for lab in ("a", "b", "c")]
    conf = {lab: rng.uniform(0.5, 1.0, 400) for lab in "abc"}
    scores = {
        0: (conf["a"], conf["a"] > 0.6),  # a: wrong below 0.6
        1: (conf["b"], conf["b"] > 0.6),
        2: (conf["c"], np.zeros(400, dtype=bool)),  # c: always wrong
    }
    cross_lab_thresholds(rows, scores)
    # c's threshold rests on a and b alone, which are right above 0.6: it accepts c's cells.
    assert rows[2]["cross_lab"]["from_labs"] == ["a", "b"]
    assert rows[2]["cross_lab"]["threshold"] > 0.55  # a lone error near 0.6 is allowed
    assert rows[2]["cross_lab"]["accepted"] > 0
    assert rows[2]["cross_lab"]["right"] == 0
    # a's rests on b and c: c's errors reach the top, so no threshold.
    assert rows[0]["cross_lab"]["threshold"] is None
    assert rows[0]["cross_lab"]["accepted"] == 0


class TinyNet(nn.Module):
    """`features` blocks then a Dropout + Linear `classifier`, as mobilenet_v2 is built."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.features = nn.Sequential(block(3, 4), block(4, 6), block(6, 8))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x).mean((2, 3)))
        return out


def test_the_tail_on_the_prefix_output_is_the_whole_network():
    model = TinyNet().eval()
    x = torch.randn(5, 3, 8, 8)
    tail = Tail(model, 1)
    with torch.no_grad():
        assert torch.allclose(tail(prefix(model, 1)(x)), model(x), atol=1e-5)
        # taps: the tail's input (block 0) and block 1, pooled, after the classifier's input.
        pooled = tail.pooled(prefix(model, 1)(x), taps=[0, 1])
    assert pooled.shape == (5, 8 + 4 + 6)
    assert torch.allclose(pooled[:, 8:12], model.features[0](x).mean((2, 3)), atol=1e-5)
    with pytest.raises(ValueError, match="inside"):
        prefix(model, 3)


def test_shifted_activations_keep_their_shape_and_move_by_at_most_the_limit():
    x = torch.zeros(6, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0  # one bright spot in the middle
    moved = shift_activations(x, 1, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape
    spots = [divmod(int(m.flatten().argmax()), 5) for m in moved]
    assert all(abs(r - 2) <= 1 and abs(c - 2) <= 1 for r, c in spots)
    assert len(set(spots)) > 1  # not all moved alike
    assert torch.equal(shift_activations(x, 0, torch.Generator()), x)


def _two_class_activations() -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix outputs of TinyNet (block 0: 4 channels) whose label is channel 0 against 1."""
    torch.manual_seed(2)
    y = torch.tensor([0, 2] * 12)  # class 1 never reviewed
    x = torch.rand(24, 4, 6, 6) * 0.2
    x[y == 0, 0] += 2.0
    x[y == 2, 1] += 2.0
    return x, y


def test_fine_tuning_the_tail_learns_the_reviewed_cells_and_only_their_classes():
    model = TinyNet().eval()
    tail = Tail(model, 1)
    x, y = _two_class_activations()
    with torch.no_grad():
        before = (tail(x).argmax(1) == y).float().mean()
    tuned = fine_tune_tail(tail, x, y, steps=150, lr=1e-2, head_lr=3e-2, anchor=0.0)
    probs = tuned.probabilities(x.unsqueeze(0))  # one view
    assert (probs.argmax(1) == y).float().mean() >= 0.95 > before
    assert probs[:, 1].max() == 0  # never reviewed, never predicted
    # The tail it was given is untouched.
    for p, q in zip(tail.parameters(), Tail(model, 1).parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_strong_anchor_keeps_the_tuned_tail_at_the_trained_weights():
    model = TinyNet().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics a batch of the reviewed cells would move
            m.running_mean.uniform_(-1.0, 1.0)  # type: ignore[union-attr]
    tail = Tail(model, 1)
    x, y = _two_class_activations()
    pinned = fine_tune_tail(tail, x, y, steps=40, lr=1e-2, head_lr=3e-2, anchor=1e4)
    free = fine_tune_tail(tail, x, y, steps=40, lr=1e-2, head_lr=3e-2, anchor=0.0)

    def drift(tuned: nn.Module) -> float:
        pairs = zip(tuned.parameters(), tail.parameters(), strict=True)
        return max(float((p - q).detach().abs().max()) for p, q in pairs)

    assert drift(pinned.tail) < 0.2 * drift(free.tail)

    # BatchNorm statistics are never re-estimated from the reviewed cells' batches.
    def running_means(net: nn.Module) -> list[torch.Tensor]:
        return [m.running_mean for m in net.modules() if isinstance(m, nn.BatchNorm2d)]  # type: ignore[misc]

    assert running_means(free.tail)
    for tuned, given in zip(running_means(free.tail), running_means(tail), strict=True):
        assert torch.equal(tuned, given)


def test_out_of_fold_scores_each_reviewed_cell_with_a_head_that_never_saw_it():
    reviewed = torch.arange(100, 120)
    y = torch.tensor([0, 1] * 10)
    fitted_on: list[set[int]] = []

    def fit(idx: torch.Tensor) -> Any:
        seen = set(idx.tolist())
        fitted_on.append(seen)

        def predict(j: torch.Tensor) -> torch.Tensor:
            assert not seen & set(j.tolist())
            return torch.full((len(j), 2), 0.5)

        return predict

    probs = out_of_fold(fit, reviewed, y)
    assert probs.shape == (20, 2)
    assert len(fitted_on) == 5
    assert all(len(s) == 16 for s in fitted_on)
