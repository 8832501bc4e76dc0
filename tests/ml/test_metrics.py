from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.metrics import (
    choose_threshold,
    confusion_matrix,
    expected_calibration_error,
    fit_temperature,
    group_vote_accuracy,
    summarize,
)


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_threshold_is_the_smallest_confidence_whose_accepted_cells_meet_the_target():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 0, 1, 1], dtype=bool)
    # Accepting >= 0.9 gives 3/3 correct; >= 0.8 drops to 3/4, >= 0.6 to 5/6.
    assert choose_threshold(conf, correct, 0.95) == 0.9
    assert choose_threshold(conf, correct, 0.8) == 0.6
    assert choose_threshold(conf, np.zeros(6, dtype=bool), 0.5) is None


def test_threshold_never_splits_tied_confidences():
    conf = np.array([0.9, 0.9, 0.5])
    correct = np.array([1, 0, 1], dtype=bool)
    assert choose_threshold(conf, correct, 0.99) is None


def test_ece_is_zero_when_confidence_matches_accuracy():
    conf = np.full(10, 0.7)
    correct = np.array([1] * 7 + [0] * 3, dtype=bool)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)
    assert expected_calibration_error(conf, np.ones(10, dtype=bool)) == pytest.approx(0.3)


def test_temperature_fit_undoes_overconfident_logits():
    torch.manual_seed(0)
    true_logits = torch.randn(4000, 5) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3.0, rel=0.1)


def test_summary_numbers_on_a_hand_made_case():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    y = np.array([0, 1, 1, 2])  # label 2 = a folder the model has no class for
    s = summarize(probs, y, ["a", "b"], 0.75, extra_labels=["zeta"])
    assert s["n"] == 4
    assert s["accuracy"] == 0.5
    assert s["confusion"] == {
        "labels": ["a", "b", "zeta"],
        "matrix": [[1, 0, 0], [1, 1, 0], [1, 0, 0]],
    }
    assert s["per_class"]["a"] == {"precision": 1 / 3, "recall": 1.0, "f1": 0.5, "support": 1}
    assert s["per_class"]["b"]["precision"] == 1.0
    assert s["per_class"]["b"]["recall"] == 0.5
    assert s["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    assert s["coverage"] == 0.5  # 0.9 and 0.8 are >= 0.75
    assert s["accuracy_above_threshold"] == 1.0


def test_coverage_curve_runs_from_full_coverage_to_the_most_confident_cells():
    from ml.metrics import coverage_curve

    conf = np.array([0.9, 0.8, 0.8, 0.6, 0.5])
    ok = np.array([True, True, False, True, False])
    curve = coverage_curve(conf, ok)
    # Thresholds at each distinct confidence; the 0.8 tie is never split.
    assert [p["threshold"] for p in curve] == [0.5, 0.6, 0.8, 0.9]
    assert [p["coverage"] for p in curve] == [1.0, 0.8, 0.6, 0.2]
    assert [p["accuracy"] for p in curve] == pytest.approx([3 / 5, 3 / 4, 2 / 3, 1.0])
    assert coverage_curve(np.zeros(0), np.zeros(0, dtype=bool)) == []


def test_group_vote_counts_each_cell_once_by_the_majority_of_its_copies():
    # cell "a": 3 of 4 copies right; cell "b": 1 of 3 right; cell "c": a 1-1 tie (wrong).
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 0, 0, 2, 0])
    groups = ["a", "a", "a", "a", "b", "b", "b", "c", "c"]
    assert group_vote_accuracy(y_true, y_pred, groups) == {"n": 3, "correct": 1, "accuracy": 1 / 3}
