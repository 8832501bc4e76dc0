"""Classification metrics shared by training and evaluation.

Everything takes plain arrays so train (cached activations) and evaluate (images) report the same
numbers the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """cm[i, j] = number of samples of true class i predicted as j."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_report(cm: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    # A class never predicted (or never present) gets 0, not NaN, like scikit-learn's default.
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        c: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, c in enumerate(classes)
    }


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> float:
    """Weighted mean |accuracy - confidence| over equal-width confidence bins."""
    if len(confidence) == 0:
        return 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(ece)


def choose_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float = 0.995
) -> float | None:
    """Smallest confidence t such that samples with confidence >= t are >= target correct.

    None when not even the most confident sample alone meets the target.
    """
    order = np.argsort(-confidence, kind="stable")
    conf, ok = confidence[order], correct[order].astype(float)
    acc = np.cumsum(ok) / np.arange(1, len(ok) + 1)
    # Only cut between distinct confidences: ties are all accepted or all rejected.
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]
    good = np.nonzero((acc >= target) & last_of_tie)[0]
    return float(conf[good[-1]]) if len(good) else None


def coverage_curve(
    confidence: np.ndarray, correct: np.ndarray, points: int = 50
) -> list[dict[str, float]]:
    """Accuracy of the accepted cells against the share accepted, as the threshold rises.

    Up to `points` entries {threshold, coverage, accuracy}, coverage from 1 down, cut only
    between distinct confidences (as `choose_threshold`).
    """
    n = len(confidence)
    if n == 0:
        return []
    order = np.argsort(-confidence, kind="stable")
    conf, ok = confidence[order], correct[order].astype(float)
    acc = np.cumsum(ok) / np.arange(1, n + 1)
    cuts = np.nonzero(np.r_[conf[1:] != conf[:-1], True])[0]  # last index of each tie
    picks = cuts[
        np.unique(np.linspace(0, len(cuts) - 1, min(points, len(cuts))).round().astype(int))
    ]
    return [
        {"threshold": float(conf[k]), "coverage": (k + 1) / n, "accuracy": float(acc[k])}
        for k in picks[::-1]
    ]


def group_vote_accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[object]
) -> dict[str, Any]:
    """Accuracy by source cell: each group (the near-copies of one cell) counts once, as right
    when most of its images are predicted as its class (ties count as wrong).

    An image-level accuracy weights a cell by its number of copies, which on the Kaggle set run
    from ~16 to ~155; this is the figure per cell a lab would see.
    """
    by_group: dict[object, list[int]] = {}
    for truth, pred, group in zip(y_true.tolist(), y_pred.tolist(), groups, strict=True):
        by_group.setdefault(group, []).append(int(truth == pred))
    right = sum(1 for votes in by_group.values() if 2 * sum(votes) > len(votes))
    n = len(by_group)
    return {"n": n, "correct": right, "accuracy": right / n if n else 0.0}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) (Guo et al., 2017)."""
    log_t = torch.zeros(1, requires_grad=True)  # optimise log T so T stays positive
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    # clone(): logits may come from inference_mode, whose tensors cannot join autograd.
    logits, labels = logits.detach().float().clone(), labels.detach().long().clone()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.exp().item())


def summarize(
    probs: np.ndarray,
    y_true: np.ndarray,
    classes: Sequence[str],
    threshold: float | None,
    *,
    extra_labels: Sequence[str] = (),
) -> dict[str, Any]:
    """The evaluation report (the JSON contract of `ml.evaluate`).

    probs: N x C calibrated probabilities over `classes`. y_true: indices into
    classes + extra_labels; extra labels are ground-truth folders the model has no class for, so
    their samples are always wrong and show up as extra confusion rows.
    """
    labels = [*classes, *extra_labels]
    y_pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = y_pred == y_true
    cm = confusion_matrix(y_true, y_pred, len(labels))
    report = per_class_report(cm, labels)
    present = [c for c in labels if report[c]["support"] > 0 or c in classes]
    accepted = confidence >= threshold if threshold is not None else np.ones_like(correct)
    n_acc = int(accepted.sum())
    return {
        "n": len(y_true),
        "accuracy": float(correct.mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.mean([report[c]["f1"] for c in present])) if present else 0.0,
        "per_class": report,
        "confusion": {"labels": labels, "matrix": cm.tolist()},
        "ece": expected_calibration_error(confidence, correct),
        "threshold": threshold,
        "coverage": n_acc / len(y_true) if len(y_true) else 0.0,
        "accuracy_above_threshold": float(correct[accepted].mean()) if n_acc else None,
    }


def format_report(summary: dict[str, Any]) -> str:
    """A plain-text classification report (per-class P/R/F1 and the headline numbers)."""
    lines = [f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, r in summary["per_class"].items():
        lines.append(
            f"{c:<16}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}{r['support']:>10d}"
        )
    thr = summary["threshold"]
    above = summary["accuracy_above_threshold"]
    lines += [
        "",
        f"n={summary['n']}  accuracy={summary['accuracy']:.4f}  macro_f1={summary['macro_f1']:.4f}"
        f"  ece={summary['ece']:.4f}",
        f"threshold={'none' if thr is None else f'{thr:.4f}'}  coverage={summary['coverage']:.4f}"
        f"  accuracy_above_threshold={'n/a' if above is None else f'{above:.4f}'}",
    ]
    return "\n".join(lines)
