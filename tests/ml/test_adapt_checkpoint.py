"""`ml.adapt.adapt_to_cells`: the portal's few-cell adaptation writes an ordinary checkpoint
(the lab's BatchNorm statistics, a refitted head, temperature, guard and a conservative
auto-accept threshold) that `ml.inference.Classifier` loads unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ml.adapt import (
    ABSENT_CLASS_BIAS,
    FEW_CELL_METHOD,
    LAB_BN,
    NO_AUTO_ACCEPT,
    REINHARD,
    FewCellOptions,
    adapt_folder,
    adapt_to_cells,
    cells_needed,
    recalibrate_batchnorm,
    trained_stain,
)
from ml.adapt_check import study_figure, summarise
from ml.checkpoint import load_checkpoint, load_ood, read_metadata
from ml.inference import Classifier
from ml.stain import StainStats
from ml.testing import make_tiny_checkpoint
from ml.views import VIEWS

CLASSES = ["lymphocyte", "monocyte", "neutrophil", "eosinophil"]
# Each reviewed class has its own cell colour, so even a random network tells them apart.
COLOURS = {
    "lymphocyte": (110, 50, 150),
    "monocyte": (40, 140, 60),
    "neutrophil": (200, 120, 30),
}


def cells(
    per_class: int, *, seed: int, background: tuple[int, int, int] = (236, 206, 214)
) -> tuple[list[Image.Image], list[str]]:
    """per_class pictures of each class of COLOURS: a disc on a background, with pixel noise.
    One size and place for every disc: a random network's features change more with those
    than with the colour, and the tests need cells a head can learn from few."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:40]
    inside = ((xx - 20) ** 2 + (yy - 20) ** 2 < 11**2)[..., None]
    pictures, labels = [], []
    for label, colour in COLOURS.items():
        for _ in range(per_class):
            pixels = np.where(inside, np.array(colour), np.array(background))
            pixels = pixels + rng.normal(0.0, 6.0, (40, 40, 3))
            pictures.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
            labels.append(label)
    return pictures, labels


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_tiny_checkpoint(tmp_path / "base.pt", CLASSES, threshold=0.5)


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def batchnorm_means(model: nn.Module) -> torch.Tensor:
    return torch.cat(
        [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]  # type: ignore[misc]
    )


def test_the_adapted_checkpoint_loads_keeps_the_classes_and_carries_the_lab_statistics(
    base: Path, tmp_path: Path
) -> None:
    pictures, labels = cells(12, seed=0, background=(200, 200, 120))  # another lab's colours
    out = tmp_path / "adapted.pt"

    metrics = adapt_to_cells(init=base, pictures=pictures, labels=labels, out=out)

    clf = Classifier.load(out, device="cpu")
    meta, base_meta = read_metadata(out), read_metadata(base)
    assert clf.classes == CLASSES == meta.classes
    assert (meta.arch, meta.input_size, meta.resize) == (
        base_meta.arch,
        base_meta.input_size,
        base_meta.resize,
    )
    assert meta.recipe["method"] == FEW_CELL_METHOD == metrics["method"]
    assert meta.recipe["options"] == FewCellOptions().to_dict()
    assert meta.metrics["reviewed_per_class"] == {c: 12 for c in COLOURS}
    # The lab's BatchNorm statistics are in the state dict, the trained ones are not.
    adapted_model, _ = load_checkpoint(out)
    base_model, _ = load_checkpoint(base)
    assert not torch.allclose(batchnorm_means(adapted_model), batchnorm_means(base_model))
    # The classifier layer is the refitted head; a class nobody reviewed is never predicted.
    linear, trained = last_linear(adapted_model), last_linear(base_model)
    assert not torch.allclose(linear.weight, trained.weight)
    assert linear.bias[CLASSES.index("eosinophil")] == ABSENT_CLASS_BIAS
    predictions = clf.predict(pictures)
    assert {p.label for p in predictions} <= set(COLOURS)
    assert all(p.probabilities["eosinophil"] < 1e-6 for p in predictions)
    # It learnt the lab's cells (the random base model cannot tell them apart).
    right = sum(p.label == y for p, y in zip(predictions, labels, strict=True))
    assert right / len(labels) > 0.9
    assert meta.temperature == pytest.approx(metrics["temperature"])
    assert meta.temperature > 0


def test_the_batch_guard_is_refitted_on_the_lab_cells_and_flags_other_pictures(
    base: Path, tmp_path: Path
) -> None:
    pictures, labels = cells(16, seed=0)
    out = tmp_path / "adapted.pt"

    metrics = adapt_to_cells(init=base, pictures=pictures, labels=labels, out=out)

    assert load_ood(base) is None
    guard = load_ood(out)
    assert guard is not None
    assert {20, 100} <= set(guard.thresholds)
    # A quarter of each class calibrates it (4 of 16), the rest fits it.
    assert metrics["guard"]["fitted_on_cells"] == 36
    assert metrics["guard"]["calibrated_on_cells"] == 12
    clf = Classifier.load(out, device="cpu")
    own = clf.check_batch(clf.preprocess(cells(7, seed=5)[0]))
    other = clf.check_batch(clf.preprocess(cells(7, seed=6, background=(20, 20, 20))[0]))
    assert own is not None
    assert other is not None
    assert other.score > own.score


def test_too_few_reviewed_cells_give_no_auto_accept_threshold_and_nothing_is_accepted(
    base: Path, tmp_path: Path
) -> None:
    pictures, labels = cells(13, seed=0)
    out = tmp_path / "adapted.pt"

    metrics = adapt_to_cells(init=base, pictures=pictures, labels=labels, out=out)

    accept = read_metadata(out).metrics["auto_accept"]
    assert accept["threshold"] is None
    assert accept["cells"] == 39 < accept["cells_needed"] == cells_needed(0.99) == 299
    assert "299" in accept["none_because"]
    assert metrics["auto_accept"] == accept
    # The checkpoint's threshold is above every confidence: nothing is auto-accepted.
    clf = Classifier.load(out, device="cpu")
    assert clf.threshold == NO_AUTO_ACCEPT
    assert all(p.confidence < clf.threshold for p in clf.predict(pictures))
    # Still a guard: a quarter of each class, rounded up (4 of 13), is enough to calibrate on.
    assert metrics["guard"]["calibrated_on_cells"] == 12
    assert clf.ood is not None


def test_enough_reviewed_cells_earn_a_threshold_that_says_what_it_rests_on(
    base: Path, tmp_path: Path
) -> None:
    pictures, labels = cells(110, seed=1)  # 330 cells, all easy
    out = tmp_path / "adapted.pt"

    adapt_to_cells(init=base, pictures=pictures, labels=labels, out=out)

    meta = read_metadata(out)
    accept = meta.metrics["auto_accept"]
    assert accept["threshold"] is not None
    # An earned threshold is a probability, not the sentinel; it may be exactly 1.0 where the
    # easy cells' confidences saturate in float32 (as they did after other tests in one run).
    assert meta.threshold == accept["threshold"] <= 1.0 < NO_AUTO_ACCEPT
    assert accept["cells"] == 330
    assert 299 <= accept["above"] <= 330
    assert accept["lower_bound"] >= 0.99
    assert accept["none_because"] is None


def test_a_folder_of_reviewed_cells_is_adapted_like_the_pictures_themselves(
    base: Path, tmp_path: Path
) -> None:
    pictures, labels = cells(10, seed=2)
    folder = tmp_path / "train"
    for i, (picture, label) in enumerate(zip(pictures, labels, strict=True)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        picture.save(folder / label / f"{i:03d}.png")

    from_folder = adapt_folder(init=base, data=folder, out=tmp_path / "a.pt")
    # list_samples orders by class folder, then file name: the same cells, in that order.
    order = sorted(range(len(labels)), key=lambda i: (labels[i], f"{i:03d}"))
    direct = adapt_to_cells(
        init=base,
        pictures=[pictures[i] for i in order],
        labels=[labels[i] for i in order],
        out=tmp_path / "b.pt",
    )

    assert from_folder["reviewed_per_class"] == direct["reviewed_per_class"]
    assert from_folder["reviewed_oof"] == direct["reviewed_oof"]
    assert from_folder["temperature"] == pytest.approx(direct["temperature"])


def test_classes_the_model_does_not_have_are_refused(base: Path, tmp_path: Path) -> None:
    pictures, labels = cells(5, seed=0)
    with pytest.raises(ValueError, match="basophil"):
        adapt_to_cells(
            init=base,
            pictures=pictures,
            labels=["basophil"] * len(labels),
            out=tmp_path / "x.pt",
        )


def test_the_portal_check_sets_each_run_beside_the_studys_figure_for_the_same_draw() -> None:
    study = {
        "rows": [
            {"lab": "stain", "variant": "bn", "views": 1, "head": "logistic", "n": 10,
             "seed": 0, "test_right": 151},
            {"lab": "stain", "variant": "bn", "views": 2, "head": "logistic", "n": 10,
             "seed": 0, "test_right": 157},
        ]
    }  # fmt: skip
    assert study_figure(study, "stain", 10, 0) == 151  # lab BN, 1 view, logistic: the method
    assert study_figure(study, "stain", 10, 1) is None
    runs = [
        {"lab": "stain", "n": 10, "bn_from": "pool", "accuracy": a, "test_cells": 176,
         "study_test_right": s, "auto_accept": {"threshold": None},
         "auto_accepted_test_cells": 0, "has_guard": True}
        for a, s in ((151 / 176, 151), (147 / 176, 147))
    ]  # fmt: skip
    (summary,) = summarise(runs)
    assert summary["accuracy"] == pytest.approx(149 / 176)
    assert summary["study_accuracy"] == pytest.approx(149 / 176)
    assert summary["runs"] == summary["runs_with_guard"] == 2
    assert summary["runs_with_threshold"] == 0


# Choosing between the lab's BatchNorm statistics and Reinhard normalisation ---------------


@pytest.fixture
def trained_base(tmp_path: Path) -> tuple[Path, StainStats]:
    """A tiny checkpoint whose BatchNorm statistics are those of cells in the training stain
    (a pink background), as training would leave them, and that stain's statistics."""
    random_base = make_tiny_checkpoint(tmp_path / "random.pt", CLASSES)
    clf = Classifier.load(random_base, device="cpu")
    training, _ = cells(10, seed=5)
    network = recalibrate_batchnorm(clf.eager, [clf.preprocess(training)])
    path = make_tiny_checkpoint(tmp_path / "trained.pt", CLASSES, model=network)
    return path, StainStats.of(training)


def test_the_lab_statistics_are_kept_when_they_get_more_reviewed_cells_right_out_of_fold(
    trained_base: tuple[Path, StainStats], tmp_path: Path
) -> None:
    base, trained = trained_base
    pictures, labels = cells(10, seed=0, background=(200, 200, 120))
    # A training stain with no spread: normalised towards it, every picture is one colour.
    flat = StainStats(mean=trained.mean, std=(0.0, 0.0, 0.0))
    out = tmp_path / "adapted.pt"

    metrics = adapt_to_cells(init=base, pictures=pictures, labels=labels, out=out, train_stain=flat)

    lab, reinhard = metrics["candidates"][LAB_BN], metrics["candidates"][REINHARD]
    assert lab["oof_right"] > reinhard["oof_right"]
    assert metrics["chosen"] == LAB_BN
    assert metrics["reviewed_oof"]["accuracy"] == lab["oof_accuracy"]
    assert metrics["temperature"] == lab["temperature"]
    meta = read_metadata(out)
    assert meta.stain_source is None
    assert meta.stain_target is None
    assert meta.views == VIEWS == Classifier.load(out, device="cpu").views
    adapted_model, _ = load_checkpoint(out)
    base_model, _ = load_checkpoint(base)
    assert not torch.allclose(batchnorm_means(adapted_model), batchnorm_means(base_model))


def test_stain_normalisation_is_kept_when_it_gets_more_reviewed_cells_right_out_of_fold(
    trained_base: tuple[Path, StainStats], tmp_path: Path
) -> None:
    base, trained = trained_base
    pictures, labels = cells(10, seed=0, background=(200, 200, 120))
    # The lab's BatchNorm statistics from one picture: poor statistics for the others.
    one_picture = [pictures[0]] * 4
    out = tmp_path / "adapted.pt"

    metrics = adapt_to_cells(
        init=base,
        pictures=pictures,
        labels=labels,
        out=out,
        train_stain=trained,
        bn_pictures=one_picture,
    )

    lab, reinhard = metrics["candidates"][LAB_BN], metrics["candidates"][REINHARD]
    assert reinhard["oof_right"] > lab["oof_right"]
    assert metrics["chosen"] == REINHARD
    assert "reinhard had" in metrics["chosen_because"]
    assert metrics["temperature"] == reinhard["temperature"]
    assert metrics["auto_accept"]["cells"] == len(labels)
    meta = read_metadata(out)
    assert (meta.stain_source, meta.stain_target) == (StainStats.of(one_picture), trained)
    assert meta.temperature == pytest.approx(reinhard["temperature"])
    # The trained BatchNorm statistics, not the lab's.
    adapted_model, _ = load_checkpoint(out)
    base_model, _ = load_checkpoint(base)
    assert torch.equal(batchnorm_means(adapted_model), batchnorm_means(base_model))
    clf = Classifier.load(out, device="cpu")
    assert clf.stain == (StainStats.of(one_picture), trained)
    right = sum(p.label == y for p, y in zip(clf.predict(pictures), labels, strict=True))
    assert right / len(labels) > 0.9


def test_the_training_stain_is_read_beside_the_base_and_without_it_only_lab_statistics_are_tried(
    trained_base: tuple[Path, StainStats], tmp_path: Path
) -> None:
    base, trained = trained_base
    pictures, labels = cells(6, seed=0)

    without = adapt_to_cells(init=base, pictures=pictures, labels=labels, out=tmp_path / "a.pt")
    base.with_suffix(".stain.json").write_text(json.dumps(trained.to_dict()))
    beside = adapt_to_cells(init=base, pictures=pictures, labels=labels, out=tmp_path / "b.pt")

    assert list(without["candidates"]) == [LAB_BN]
    assert without["chosen"] == LAB_BN
    assert "training stain is not known" in without["skipped"][REINHARD]
    assert set(beside["candidates"]) == {LAB_BN, REINHARD}
    assert beside["skipped"] == {}
    assert trained_stain(base) == trained
