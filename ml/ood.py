"""A batch-level out-of-distribution guard: "these cells are unlike anything this model was
validated on".

Features are the model's pooled penultimate activations (the input of its classifier). The
guard models them as class-conditional Gaussians with one shared (within-class) covariance, kept
to its top `k` principal directions (Lee et al. 2018, Mahalanobis), plus the squared distance
outside those directions:

    cell score = min_c ||z - m_c||^2 / k + ||residual||^2 / (mean training residual)

Both terms are about 1 for training cells. A batch's score is the mean of its cells' scores, so
that one odd cell does not flag a batch while a batch from another microscope does. The flag
threshold for a batch of n cells is the `quantile` of the scores of random in-distribution
batches of n validation cells (`calibrate`): about 1 - quantile of in-distribution batches are
flagged by construction. Everything is stored in the checkpoint as plain tensors and floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

BATCH_SIZES = (1, 5, 20, 100)


@dataclass
class OODGuard:
    mean: torch.Tensor  # D
    components: torch.Tensor  # D x k, whitening (eigenvectors / sqrt(eigenvalues))
    basis: torch.Tensor  # D x k, orthonormal eigenvectors (for the residual)
    class_means: torch.Tensor  # C x k, whitened
    residual_scale: float
    thresholds: dict[int, float] = field(default_factory=dict)  # batch size -> flag above
    # Optionally a second guard of the same kind on the per-channel mean and standard deviation
    # of these earlier blocks of the network (`ml.inference.PooledFeatures(taps=)`: their
    # columns follow the pooled ones), whose cell score is added: it sees stain, focus and
    # camera noise, which the pooled features are trained to ignore (docs/MODELS.md).
    taps: tuple[int, ...] = ()
    early: OODGuard | None = None

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, *, k: int = 32) -> OODGuard:
        x = features.double()
        mean = x.mean(0)
        classes = sorted(set(labels.tolist()))
        centred = x.clone()
        for c in classes:
            sel = labels == c
            centred[sel] -= x[sel].mean(0)
        cov = centred.T @ centred / max(len(x) - len(classes), 1)
        evals, evecs = torch.linalg.eigh(cov)
        k = min(k, x.shape[1])
        evals, evecs = evals.flip(0)[:k].clamp_min(1e-8), evecs.flip(1)[:, :k]
        whiten = evecs / evals.sqrt()
        z = (x - mean) @ whiten
        class_means = torch.stack([z[labels == c].mean(0) for c in classes])
        resid = _residual2(x - mean, evecs)
        return cls(
            mean=mean.float(),
            components=whiten.float(),
            basis=evecs.float(),
            class_means=class_means.float(),
            residual_scale=float(resid.mean().clamp_min(1e-8)),
        )

    def cell_scores(self, features: torch.Tensor) -> torch.Tensor:
        width = self.mean.shape[0]
        x = features[:, :width].float() - self.mean
        z = x @ self.components
        d2 = torch.cdist(z, self.class_means).pow(2).min(1).values / self.components.shape[1]
        scores = d2 + _residual2(x, self.basis) / self.residual_scale
        if self.early is not None:
            scores = scores + self.early.cell_scores(features[:, width:])
        return scores

    def batch_score(self, features: torch.Tensor) -> float:
        return float(self.cell_scores(features).mean())

    @property
    def cell_limit(self) -> float | None:
        """The per-cell limit: the size-1 threshold (the quantile of single in-lab cells'
        scores), None when the guard was not calibrated for single cells."""
        return self.thresholds.get(1)

    def odd_cells(self, features: torch.Tensor) -> list[int]:
        """The cells (row indices) whose own score is above the per-cell limit: held for review
        even in a batch whose mean passes, so one odd cell cannot hide among normal ones."""
        return odd_cells(self.cell_scores(features).tolist(), self.cell_limit)

    def calibrated_size_for(self, n: int) -> int | None:
        """The calibrated batch size whose threshold a batch of n cells is judged by: the
        largest not above n (None: n is below every calibrated size)."""
        sizes = [s for s in sorted(self.thresholds) if s <= n]
        return sizes[-1] if sizes else None

    def threshold_for(self, n: int) -> float | None:
        """The flag threshold for a batch of n cells: that of the largest calibrated batch size
        not above n (smaller batches are noisier, so their thresholds are higher)."""
        size = self.calibrated_size_for(n)
        return None if size is None else self.thresholds[size]

    def flags(self, features: torch.Tensor) -> bool:
        t = self.threshold_for(len(features))
        return t is not None and self.batch_score(features) > t

    def calibrate(
        self,
        features_by_lab: Sequence[torch.Tensor],
        *,
        sizes: Sequence[int] = BATCH_SIZES,
        quantile: float = 0.99,
        draws: int = 2000,
        seed: int = 0,
    ) -> None:
        """Thresholds from random batches of in-distribution (validation) cells, each batch
        drawn within one lab, as a lab's upload is."""
        scores = [self.cell_scores(f).numpy() for f in features_by_lab]
        rng = np.random.default_rng(seed)
        for n in sizes:
            means = [batch_means(s, n, draws, rng) for s in scores if len(s) >= n]
            if means:
                self.thresholds[int(n)] = float(np.quantile(np.concatenate(means), quantile))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "mahalanobis-tied",
            "mean": self.mean,
            "components": self.components,
            "basis": self.basis,
            "class_means": self.class_means,
            "residual_scale": self.residual_scale,
            "thresholds": {int(k): float(v) for k, v in self.thresholds.items()},
            "taps": list(self.taps),
            "early": None if self.early is None else self.early.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OODGuard:
        return cls(
            mean=d["mean"].float(),
            components=d["components"].float(),
            basis=d["basis"].float(),
            class_means=d["class_means"].float(),
            residual_scale=float(d["residual_scale"]),
            thresholds={int(k): float(v) for k, v in d.get("thresholds", {}).items()},
            taps=tuple(int(i) for i in d.get("taps", ())),
            early=None if d.get("early") is None else cls.from_dict(d["early"]),
        )


def odd_cells(scores: Sequence[float], limit: float | None) -> list[int]:
    """Indices of the cell scores above the per-cell limit (none without a limit)."""
    return [] if limit is None else [i for i, v in enumerate(scores) if v > limit]


def _residual2(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    proj = (x @ basis) @ basis.T
    return (x - proj).pow(2).sum(1)


def batch_means(scores: np.ndarray, n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Mean score of `draws` random batches of n cells (without replacement within a batch)."""
    idx = np.stack([rng.choice(len(scores), size=n, replace=False) for _ in range(draws)])
    return np.asarray(scores[idx].mean(axis=1))


def grouped_batch_indices(
    groups: np.ndarray, n: int, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """`draws` random batches of n cells of one pool, as rows of cell indices: n distinct
    groups (one random copy of each; a group is one source cell's near-copies) while the pool
    has n groups, else groups drawn with replacement (fewer distinct cells: a noisier batch)."""
    keys, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=len(keys))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    replace = len(keys) < n
    picks = np.stack([rng.choice(len(keys), size=n, replace=replace) for _ in range(draws)])
    member = (rng.random(picks.shape) * sizes[picks]).astype(int)
    return np.asarray(order[starts[picks] + member])


def grouped_batch_means(
    scores: np.ndarray, groups: np.ndarray, n: int, draws: int, rng: np.random.Generator
) -> np.ndarray:
    """Mean score of `draws` random batches of n cells of one pool (`grouped_batch_indices`:
    distinct groups while the pool has n of them, so a higher, more lenient threshold when
    it has fewer)."""
    return np.asarray(scores[grouped_batch_indices(groups, n, draws, rng)].mean(axis=1))


def grouped_thresholds(
    scores: np.ndarray,
    groups: np.ndarray,
    sizes: Sequence[int],
    *,
    quantile: float = 0.99,
    draws: int = 2000,
    rng: np.random.Generator,
) -> dict[int, float]:
    """The flag threshold per batch size: the quantile of grouped_batch_means."""
    return {
        int(n): float(np.quantile(grouped_batch_means(scores, groups, n, draws, rng), quantile))
        for n in sizes
    }


# A guard needs this many held-out cells to calibrate on; with fewer, a model gets none.
MIN_CALIBRATION_CELLS = 10


def fit_guard(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    *,
    sizes: Sequence[int] = BATCH_SIZES,
    k: int = 32,
    quantile: float = 0.99,
    seed: int = 0,
) -> tuple[OODGuard | None, dict[str, Any]]:
    """A guard fitted on the training features and calibrated on held-out ones (each cell its
    own group), with what it rests on; (None, why) when there are too few cells. Few cells
    bound the number of directions: k is at most half the training cells beyond one a class."""
    n_classes = len(set(train_labels.tolist()))
    k = min(k, (len(train_features) - n_classes) // 2)
    info: dict[str, Any] = {
        "fitted_on_cells": len(train_features),
        "calibrated_on_cells": len(val_features),
    }
    if k < 2 or len(val_features) < MIN_CALIBRATION_CELLS:
        info["none_because"] = (
            f"too few cells: {len(train_features)} to fit on (at least {n_classes + 4}), "
            f"{len(val_features)} to calibrate on (at least {MIN_CALIBRATION_CELLS})"
        )
        return None, info
    guard = OODGuard.fit(train_features, train_labels, k=k)
    scores = guard.cell_scores(val_features).numpy()
    guard.thresholds = grouped_thresholds(
        scores,
        np.arange(len(scores)),
        sizes,
        quantile=quantile,
        rng=np.random.default_rng(seed),
    )
    info |= {"k": k, "quantile": quantile, "thresholds": dict(guard.thresholds)}
    return guard, info


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U)."""
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="stable")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    # average ranks over ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv, ranks)
    ranks = (sums / counts)[inv]
    u = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(neg) * len(pos)))
