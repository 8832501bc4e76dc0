"""Training curves and confusion-matrix figures (PNG, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # training runs on servers without a display
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_acc"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_confusion(
    matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike[str]
) -> None:
    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(labels), 0.8 + 0.6 * len(labels)))
    ax.imshow(cm, cmap="Blues")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    half = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            color = "white" if cm[i, j] > half else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_coverage(
    curve: Sequence[dict[str, float]],
    path: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    target: float | None = None,
) -> None:
    """Accuracy of auto-accepted cells against coverage (from `ml.metrics.coverage_curve`)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], marker=".")
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", label=f"target {target:.3f}")
    if threshold is not None:
        chosen = [p for p in curve if p["threshold"] >= threshold]
        if chosen:
            c = min(chosen, key=lambda p: p["threshold"])
            ax.plot([c["coverage"]], [c["accuracy"]], "o", color="red", label=f"t={threshold:.3f}")
    ax.set(xlabel="coverage (share auto-accepted)", ylabel="accuracy of accepted cells")
    ax.set(title="Coverage / accuracy")
    ax.grid(alpha=0.3)
    if target is not None or threshold is not None:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
