"""Leave-one-lab-out study of batch-guard designs on one model's features (issue 24, "a guard a
lab can trust").

    nice -n 10 python -m ml.guard_study --model ml/weights/pbc8-mobilenetv2.pt \
        --data ../shared/data/pbc/dev \
        --lab kaggle:bccd:copies:../shared/data/kaggle-blood-cells/TRAIN:1400 \
        --lab bccd:bccd:voc:../shared/data/bccd \
        --cache-dir var/guard/study --json ml/weights/pbc8-mobilenetv2.guard-study.json
    python -m ml.guard_report --study ml/weights/pbc8-mobilenetv2.guard-study.json

The pools: the model's own training cells (`ml.guard.model_split`, at most --fit-per-class a
class; "seen": used only to fit), its val cells, every --lab source, and the synthetic shifts
of `ml.guard.SHIFTS` applied to cells of each lab. Each cell's features are computed once
(cached in chunks under --cache-dir; an interrupted run resumes): the pooled penultimate
features the shipped guard models, and the per-channel mean and standard deviation of two early
(`features[3]`, `features[6]`) and two middle (`features[10]`, `features[13]`) MobileNetV2
blocks, which see colour, sharpness and noise that the pooled features are trained to ignore.

One fold per lab: the guard is fitted on the other labs only, and the left-out lab's cells and
the synthetic shifts of the in-lab cells must be flagged. In-lab cells the model never trained
on are split by group (near-copies of a cell on one side): where the lab has cells the model
trained on, those fit the guard and the unseen ones are halved into calibration and test; else
half the groups fit, a quarter calibrate, a quarter test. The thresholds (per batch size, the
--quantile of random in-lab batches of the calibration cells, drawn within one pool) are tested
on batches of the test cells (false alarms) and of every away pool (detections); calibration
and test swap and the two are averaged. --bootstrap resamples the calibration and test cells by
group (a fresh threshold each time) for 95 % intervals of the threshold, the false alarms and
the detections.

Designs (`DESIGNS`): the feature set (pooled, early, mid, several summed), the distance
(class-conditional Mahalanobis in the top-k directions of the within-class covariance plus the
residual, as shipped; full Mahalanobis with Ledoit-Wolf shrinkage; cosine k-nearest-neighbour),
per-class conditioning or one Gaussian for all cells, and the batch statistic (mean cell score,
or a two-sample test of the batch against the fitting cells: the maximum mean discrepancy with
a Gaussian kernel, or the energy distance, in the whitened space).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml import guard
from ml.checkpoint import atomic_save, sha256_of
from ml.guard import SHIFTS, fit_subset, group_ids, model_split
from ml.inference import Classifier
from ml.ood import BATCH_SIZES, OODGuard, auroc, grouped_batch_indices, grouped_thresholds
from ml.sources import Cell, SourceSpec, limit_cells, list_cells

# MobileNetV2 blocks whose per-channel mean and standard deviation make the early and middle
# feature sets (at 192 px: 48x48x24, 24x24x32, 12x12x64, 12x12x96).
TAPS = {"early": (3, 6), "mid": (10, 13)}
FeatureSet = dict[str, torch.Tensor]


# Features -------------------------------------------------------------------------------------


@torch.inference_mode()
def tapped_features(clf: Classifier, batch: torch.Tensor) -> FeatureSet:
    """Pooled penultimate features (as `Classifier.embed`) and the early / middle blocks'
    per-channel mean and standard deviation, in one pass."""
    blocks = clf.eager.get_submodule("features")
    wanted = {i for taps in TAPS.values() for i in taps}
    x, stats = batch.float(), {}
    for i, block in enumerate(blocks.children()):
        x = block(x)
        if i in wanted:
            stats[i] = torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)
    out = {"pooled": x.mean((2, 3))}
    for name, taps in TAPS.items():
        out[name] = torch.cat([stats[i] for i in taps], dim=1)
    return out


def cached_features(
    clf: Classifier,
    cells: Sequence[Cell],
    *,
    model_sha256: str,
    shift: str | None,
    cache: Path,
    chunk: int,
    seed: int,
) -> FeatureSet:
    """tapped_features of the cells (optionally under a synthetic shift), cached in chunk files
    keyed by the model's geometry and weights, the cells and the shift (ml.guard's cache)."""
    return guard.cached_features(
        clf,
        cells,
        identity=[clf.geometry, model_sha256],
        extract=lambda batch: tapped_features(clf, batch),
        join=lambda found: {n: torch.cat([f[n] for f in found]) for n in found[0]},
        shift=shift,
        cache=cache,
        chunk=chunk,
        seed=seed,
    )


# Designs --------------------------------------------------------------------------------------


class Scorer:
    """A fitted guard design: cell scores, and the statistic of batches given as index rows."""

    def cell_scores(self, x: FeatureSet) -> np.ndarray:
        raise NotImplementedError

    def scores(self, x: FeatureSet) -> np.ndarray:
        """cell_scores, remembered (keyed by id; the feature set is kept with its scores so
        that its id is not reused) until forget()."""
        memo: dict[int, tuple[FeatureSet, np.ndarray]] = self.__dict__.setdefault("_memo", {})
        if id(x) not in memo:
            memo[id(x)] = (x, self.cell_scores(x))
        return memo[id(x)][1]

    def forget(self) -> None:
        self.__dict__.pop("_memo", None)

    def batch_stats(self, x: FeatureSet, batches: np.ndarray) -> np.ndarray:
        return np.asarray(self.scores(x)[batches].mean(axis=1))


@dataclass
class MahalanobisScorer(Scorer):
    """The shipped design (`ml.ood.OODGuard`) on one feature set."""

    guard: OODGuard
    features: str

    def cell_scores(self, x: FeatureSet) -> np.ndarray:
        return np.asarray(self.guard.cell_scores(x[self.features]).double().numpy())


@dataclass
class ShrunkScorer(Scorer):
    """Full class-conditional Mahalanobis with one shared covariance shrunk towards a scaled
    identity (Ledoit-Wolf), divided by the dimension."""

    mean: np.ndarray
    precision: np.ndarray
    class_means: np.ndarray
    features: str

    def cell_scores(self, x: FeatureSet) -> np.ndarray:
        z = x[self.features].double().numpy()
        best = np.full(len(z), np.inf)
        for m in self.class_means:
            d = z - m
            best = np.minimum(best, ((d @ self.precision) * d).sum(axis=1))
        return np.asarray(best / z.shape[1])


@dataclass
class KnnScorer(Scorer):
    """Cosine distance to the k-th nearest fitting cell, over its median among fitting cells."""

    reference: np.ndarray  # unit rows
    k: int
    scale: float
    features: str

    def cell_scores(self, x: FeatureSet) -> np.ndarray:
        z = _unit(x[self.features].double().numpy())
        out = np.empty(len(z))
        for s in range(0, len(z), 512):
            sim = z[s : s + 512] @ self.reference.T
            # 1 - the k-th largest similarity
            out[s : s + 512] = 1.0 + np.partition(-sim, self.k - 1, axis=1)[:, self.k - 1]
        return np.asarray(out / self.scale)


@dataclass
class SumScorer(Scorer):
    parts: list[Scorer]

    def cell_scores(self, x: FeatureSet) -> np.ndarray:
        return np.asarray(sum(p.cell_scores(x) for p in self.parts))


@dataclass
class TwoSampleScorer(Scorer):
    """A two-sample statistic between a batch and the fitting cells in the guard's whitened
    space: the (biased) squared maximum mean discrepancy with a Gaussian kernel of median
    bandwidth, or the energy distance. Cell scores are those of the underlying guard."""

    base: MahalanobisScorer
    reference: np.ndarray  # whitened fitting cells (a random subset)
    statistic: str  # "mmd" or "energy"
    bandwidth: float

    def whiten(self, x: FeatureSet) -> np.ndarray:
        g = self.base.guard
        z = (x[self.base.features].float() - g.mean) @ g.components
        return np.asarray(z.double().numpy())

    def cell_scores(self, x: FeatureSet) -> np.ndarray:
        return self.base.cell_scores(x)

    def batch_stats(self, x: FeatureSet, batches: np.ndarray) -> np.ndarray:
        z = self.whiten(x)
        ref = self.reference
        cross = _sqdist(z, ref)  # every cell against the reference, once
        if self.statistic == "mmd":
            kc = np.exp(-cross / self.bandwidth).mean(axis=1)
            kr = float(np.exp(-_sqdist(ref, ref) / self.bandwidth).mean())
        else:
            kc = np.sqrt(cross).mean(axis=1)
            kr = float(np.sqrt(_sqdist(ref, ref)).mean())
        out = np.empty(len(batches))
        for b, idx in enumerate(batches):
            within = _sqdist(z[idx], z[idx])
            if self.statistic == "mmd":
                out[b] = np.exp(-within / self.bandwidth).mean() + kr - 2 * kc[idx].mean()
            else:
                out[b] = 2 * kc[idx].mean() - np.sqrt(within).mean() - kr
        return out


def _unit(a: np.ndarray) -> np.ndarray:
    return np.asarray(a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12))


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.asarray(np.maximum(d, 0.0))


def _ledoit_wolf(centred: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf (2004) shrinkage of the sample covariance towards mu * I."""
    n, p = centred.shape
    s = centred.T @ centred / n
    mu = np.trace(s) / p
    delta = ((s - mu * np.eye(p)) ** 2).sum() / p
    x2 = centred**2
    beta = min(float(((x2.T @ x2) / n - s**2).sum() / (p * n)), delta)
    shrink = beta / delta if delta > 0 else 1.0
    return np.asarray(shrink * mu * np.eye(p) + (1 - shrink) * s)


Fit = Callable[[FeatureSet, torch.Tensor, np.random.Generator], Scorer]


def mahalanobis(features: str, k: int, *, per_class: bool = True) -> Fit:
    def fit(x: FeatureSet, y: torch.Tensor, rng: np.random.Generator) -> Scorer:
        labels = y if per_class else torch.zeros_like(y)
        return MahalanobisScorer(OODGuard.fit(x[features], labels, k=k), features)

    return fit


def shrunk(features: str) -> Fit:
    def fit(x: FeatureSet, y: torch.Tensor, rng: np.random.Generator) -> Scorer:
        z = x[features].double().numpy()
        labels = y.numpy()
        means = np.stack([z[labels == c].mean(0) for c in np.unique(labels)])
        centred = z - means[np.searchsorted(np.unique(labels), labels)]
        precision = np.linalg.inv(_ledoit_wolf(centred))
        return ShrunkScorer(z.mean(0), precision, means, features)

    return fit


def knn(features: str, k: int) -> Fit:
    def fit(x: FeatureSet, y: torch.Tensor, rng: np.random.Generator) -> Scorer:
        ref = _unit(x[features].double().numpy())
        sim = ref[: min(len(ref), 1000)] @ ref.T
        # Its own row is its nearest neighbour: the (k+1)-th is the k-th other cell.
        own = 1.0 + np.partition(-sim, k, axis=1)[:, k]
        return KnnScorer(ref, k, float(np.median(own)), features)

    return fit


def summed(*fits: Fit) -> Fit:
    def fit(x: FeatureSet, y: torch.Tensor, rng: np.random.Generator) -> Scorer:
        return SumScorer([f(x, y, rng) for f in fits])

    return fit


def two_sample(statistic: str, features: str = "pooled", k: int = 32, ref: int = 400) -> Fit:
    def fit(x: FeatureSet, y: torch.Tensor, rng: np.random.Generator) -> Scorer:
        base = MahalanobisScorer(OODGuard.fit(x[features], y, k=k), features)
        pick = rng.choice(len(y), size=min(ref, len(y)), replace=False)
        scorer = TwoSampleScorer(base, np.zeros((0, k)), statistic, 1.0)
        z = scorer.whiten({features: x[features][pick]})
        scorer.reference = z
        scorer.bandwidth = float(np.median(_sqdist(z, z)))
        return scorer

    return fit


DESIGNS: dict[str, Fit] = {
    "pooled mahalanobis k32 (shipped)": mahalanobis("pooled", 32),
    "pooled mahalanobis k16": mahalanobis("pooled", 16),
    "pooled mahalanobis k64": mahalanobis("pooled", 64),
    "pooled mahalanobis k32, one class": mahalanobis("pooled", 32, per_class=False),
    "pooled ledoit-wolf": shrunk("pooled"),
    "pooled knn k10": knn("pooled", 10),
    "early mahalanobis k32": mahalanobis("early", 32),
    "mid mahalanobis k32": mahalanobis("mid", 32),
    "pooled + early": summed(mahalanobis("pooled", 32), mahalanobis("early", 32)),
    "pooled + early + mid": summed(
        mahalanobis("pooled", 32), mahalanobis("early", 32), mahalanobis("mid", 32)
    ),
    "pooled k32, batch MMD": two_sample("mmd"),
    "pooled k32, batch energy distance": two_sample("energy"),
}


# Folds ----------------------------------------------------------------------------------------


@dataclass
class Pool:
    name: str
    lab: str
    cells: list[Cell]
    x: FeatureSet
    seen: bool = False  # the model trained on these cells: they only fit guards
    shifted: bool = False  # a synthetic shift of some lab's cells: never in-lab

    @property
    def groups(self) -> np.ndarray:
        return group_ids(self.cells)


def take(x: FeatureSet, idx: np.ndarray) -> FeatureSet:
    t = torch.as_tensor(idx, dtype=torch.long)
    return {n: v[t] for n, v in x.items()}


def split_groups(groups: np.ndarray, shares: Sequence[float], seed: int) -> list[np.ndarray]:
    """Index sets with whole groups on one side, about these shares of the groups each."""
    uniq = np.random.default_rng(seed).permutation(np.unique(groups))
    bounds = np.round(np.cumsum([0, *shares]) / sum(shares) * len(uniq)).astype(int)
    where = {int(g): j for j in range(len(shares)) for g in uniq[bounds[j] : bounds[j + 1]]}
    side = np.array([where[int(g)] for g in groups])
    return [np.nonzero(side == j)[0] for j in range(len(shares))]


@dataclass
class Side:
    """One in-lab pool's calibration or test cells."""

    name: str
    x: FeatureSet
    groups: np.ndarray


def fold_sides(
    pools: Sequence[Pool], lab: str, classes: Sequence[str], seed: int
) -> tuple[FeatureSet, torch.Tensor, list[Side], list[Side]]:
    """The fitting cells (features, labels) and the calibration and test sides of every
    unseen in-lab pool of the fold that leaves `lab` out."""
    inside = [p for p in pools if p.lab != lab and not p.shifted]
    has_seen = {p.lab for p in inside if p.seen}
    fit_x: list[FeatureSet] = []
    fit_y: list[torch.Tensor] = []
    cal: list[Side] = []
    test: list[Side] = []
    for p in inside:
        labels = torch.tensor(
            [classes.index(c.label) if c.label in classes else -1 for c in p.cells]
        )
        if p.seen:
            fit_x.append(p.x)
            fit_y.append(labels)
            continue
        g = p.groups
        if p.lab in has_seen:
            a, b = split_groups(g, (1, 1), seed)
        else:
            f, a, b = split_groups(g, (2, 1, 1), seed)
            known = f[labels[f].numpy() >= 0]
            fit_x.append(take(p.x, known))
            fit_y.append(labels[known])
        cal.append(Side(p.name, take(p.x, a), g[a]))
        test.append(Side(p.name, take(p.x, b), g[b]))
    x = {n: torch.cat([f[n] for f in fit_x]) for n in fit_x[0]}
    return x, torch.cat(fit_y), cal, test


def thresholds_of(
    scorer: Scorer,
    sides: Sequence[Side],
    sizes: Sequence[int],
    *,
    quantile: float,
    draws: int,
    rng: np.random.Generator,
) -> dict[int, float]:
    found = {}
    for n in sizes:
        stats = [
            scorer.batch_stats(s.x, grouped_batch_indices(s.groups, n, draws, rng)) for s in sides
        ]
        found[int(n)] = float(np.quantile(np.concatenate(stats), quantile))
    return found


def flag_rates(
    scorer: Scorer,
    sides: Sequence[Side],
    limits: dict[int, float],
    *,
    draws: int,
    rng: np.random.Generator,
) -> dict[int, dict[str, tuple[float, np.ndarray]]]:
    """Per batch size and pool: the share of random batches above the limit, and the stats."""
    out: dict[int, dict[str, tuple[float, np.ndarray]]] = {}
    for n, limit in limits.items():
        out[n] = {}
        for s in sides:
            stats = scorer.batch_stats(s.x, grouped_batch_indices(s.groups, n, draws, rng))
            out[n][s.name] = (float((stats > limit).mean()), stats)
    return out


def resample(side: Side, rng: np.random.Generator) -> Side:
    """The side's groups drawn with replacement; a group drawn twice counts as two groups."""
    uniq = np.unique(side.groups)
    picked = rng.choice(uniq, size=len(uniq), replace=True)
    idx = [np.nonzero(side.groups == g)[0] for g in picked]
    new = np.concatenate([np.full(len(i), j) for j, i in enumerate(idx)])
    return Side(side.name, take(side.x, np.concatenate(idx)), new)


def run_fold(
    fit: Fit,
    pools: Sequence[Pool],
    lab: str,
    classes: Sequence[str],
    args: argparse.Namespace,
    bootstrap: int = 0,
) -> dict[str, Any]:
    """One design, one left-out lab: thresholds, false alarms and detections per batch size
    (calibration and test swapped, averaged), optionally bootstrapped."""
    fit_x, fit_y, cal, test = fold_sides(pools, lab, classes, args.seed)
    rng = np.random.default_rng(args.seed)
    keep = fit_y >= 0
    scorer = fit(take(fit_x, np.nonzero(keep.numpy())[0]), fit_y[keep], rng)
    # The left-out lab's cells and every synthetic shift (of in-lab cells: the shifts of the
    # left-out lab's cells are away cells anyway).
    away = [
        Side(p.name, p.x, p.groups) for p in pools if not p.seen and (p.lab == lab or p.shifted)
    ]
    sizes = sorted(set(args.sizes))
    halves = []
    for calibrate, measure in ((cal, test), (test, cal)):
        limits = thresholds_of(
            scorer, calibrate, sizes, quantile=args.quantile, draws=args.draws, rng=rng
        )
        inside = flag_rates(scorer, measure, limits, draws=args.draws, rng=rng)
        outside = flag_rates(scorer, away, limits, draws=args.draws, rng=rng)
        halves.append((limits, inside, outside))
    result: dict[str, Any] = {
        "fitted_on": int(keep.sum()),
        "calibrated_on": {s.name: [len(s.groups), len(np.unique(s.groups))] for s in cal},
        "tested_on": {s.name: [len(s.groups), len(np.unique(s.groups))] for s in test},
    }
    for n in sizes:
        entry: dict[str, Any] = {
            "threshold": [h[0][n] for h in halves],
            "false_alarm": {
                name: float(np.mean([h[1][n][name][0] for h in halves])) for name in halves[0][1][n]
            },
            "detected": {
                name: float(np.mean([h[2][n][name][0] for h in halves])) for name in halves[0][2][n]
            },
            "auroc": {
                name: float(
                    np.mean(
                        [
                            auroc(
                                np.concatenate([s for _, s in h[1][n].values()]), h[2][n][name][1]
                            )
                            for h in halves
                        ]
                    )
                )
                for name in halves[0][2][n]
            },
        }
        result[f"batch_{n}"] = entry
    if bootstrap:
        result["bootstrap"] = bootstrap_fold(scorer, cal, test, away, sizes, args, bootstrap)
    return result


def bootstrap_fold(
    scorer: Scorer,
    cal: Sequence[Side],
    test: Sequence[Side],
    away: Sequence[Side],
    sizes: Sequence[int],
    args: argparse.Namespace,
    times: int,
) -> dict[str, Any]:
    """95 % intervals: calibration and test cells resampled by group, the threshold refitted,
    false alarms and detections recounted (calibrate on one half, test on the other)."""
    rng = np.random.default_rng([args.seed, 1])
    draws = max(200, args.draws // 4)
    found: dict[int, dict[str, list[float]]] = {int(n): {} for n in sizes}
    for _ in range(times):
        c = [resample(s, rng) for s in cal]
        t = [resample(s, rng) for s in test]
        limits = thresholds_of(scorer, c, sizes, quantile=args.quantile, draws=draws, rng=rng)
        inside = flag_rates(scorer, t, limits, draws=draws, rng=rng)
        outside = flag_rates(scorer, away, limits, draws=draws, rng=rng)
        scorer.forget()  # the resampled sides' scores are not needed again
        for n in sizes:
            rows = found[int(n)]
            rows.setdefault("threshold", []).append(limits[n])
            fa = float(np.mean([v[0] for v in inside[n].values()]))
            rows.setdefault("false_alarm", []).append(fa)
            for name, (rate, _) in outside[n].items():
                rows.setdefault(f"detected {name}", []).append(rate)
    return {
        f"batch_{n}": {
            k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
            for k, v in rows.items()
        }
        for n, rows in found.items()
    } | {"times": times}


# Shipping -------------------------------------------------------------------------------------

# Designs that `OODGuard` stores in a checkpoint (the others are measured only).
SHIPPABLE = ("pooled mahalanobis k32 (shipped)", "pooled + early")


def ship_guard(
    design: str, pools: Sequence[Pool], classes: Sequence[str], args: argparse.Namespace
) -> tuple[OODGuard, dict[str, Any]]:
    """The design fitted on the model's own training cells ("seen") and calibrated on all its
    val cells (sizes 1, 5, 20, 100 and --sizes; the size-1 limit is the per-cell one)."""
    train = next(p for p in pools if p.name == "train")
    val = next(p for p in pools if p.name == "val")
    labels = torch.tensor([classes.index(c.label) for c in train.cells])
    guard = OODGuard.fit(train.x["pooled"], labels, k=32)
    inputs = val.x["pooled"]
    if design == "pooled + early":
        guard.taps = TAPS["early"]
        guard.early = OODGuard.fit(train.x["early"], labels, k=32)
        inputs = torch.cat([val.x["pooled"], val.x["early"]], dim=1)
    scores = guard.cell_scores(inputs).numpy()
    sizes = sorted({*BATCH_SIZES, *args.sizes})
    guard.thresholds = grouped_thresholds(
        scores,
        val.groups,
        sizes,
        quantile=args.quantile,
        draws=args.draws,
        rng=np.random.default_rng(args.seed),
    )
    info = {
        "design": design,
        "fitted_on_cells": len(train.cells),
        "calibrated_on_cells": len(val.cells),
        "quantile": args.quantile,
        "thresholds": guard.thresholds,
        "taps": list(guard.taps),
    }
    return guard, info


# Main -----------------------------------------------------------------------------------------


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="the model's --data folder (its split)")
    p.add_argument("--model-lab", default="pbc", help="the lab of the model's --data")
    p.add_argument("--lab", action="append", default=[], help="NAME:LAB:KIND:PATH[:LIMIT]")
    p.add_argument("--shifts", nargs="*", default=sorted(SHIFTS), choices=sorted(SHIFTS))
    p.add_argument("--shift-cells", type=int, default=400, help="cells shifted per lab")
    p.add_argument("--fit-per-class", type=int, default=400)
    p.add_argument("--designs", nargs="*", default=list(DESIGNS), choices=list(DESIGNS))
    p.add_argument("--quantile", type=float, default=0.99)
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 100])
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--bootstrap", type=int, default=0)
    p.add_argument("--bootstrap-designs", nargs="*", default=[], choices=list(DESIGNS))
    p.add_argument("--ship", choices=SHIPPABLE, help="fit this design for the checkpoint")
    p.add_argument("--out", help="write the checkpoint with the --ship guard here")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256)
    return p


def load_pools(args: argparse.Namespace, clf: Classifier) -> list[Pool]:
    ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
    train, val = model_split(args, dict(ckpt.get("recipe", {})))
    cache = Path(args.cache_dir)
    sha = sha256_of(args.model)

    def feats(cells: Sequence[Cell], shift: str | None = None) -> FeatureSet:
        t = time.time()
        out = cached_features(
            clf,
            cells,
            model_sha256=sha,
            shift=shift,
            cache=cache,
            chunk=args.chunk,
            seed=args.seed,
        )
        print(
            f"features of {len(cells)} cells (shift {shift}) in {time.time() - t:.0f}s", flush=True
        )
        return out

    seen = fit_subset(train, args.fit_per_class, args.seed)
    pools = [
        Pool("train", args.model_lab, seen, feats(seen), seen=True),
        Pool("val", args.model_lab, val, feats(val)),
    ]
    for text in args.lab:
        spec = SourceSpec.parse(text)
        cells = limit_cells(list_cells(spec), spec, seed=args.seed)
        pools.append(Pool(spec.name, spec.lab, cells, feats(cells)))
    base = {p.lab: p for p in reversed(pools) if not p.seen}  # the first unseen pool of a lab
    for lab, p in sorted(base.items()):
        first: dict[str, Cell] = {}
        for c in p.cells:
            first.setdefault(c.group, c)  # one copy of each source cell
        one_each = list(first.values())
        per_class = -(-args.shift_cells // len({c.label for c in one_each}))
        chosen = fit_subset(one_each, per_class, args.seed)
        for shift in args.shifts:
            pools.append(Pool(f"{shift}@{lab}", lab, chosen, feats(chosen, shift), shifted=True))
    return pools


def main(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    torch.set_num_threads(args.threads)
    args.extra_train = None
    clf = Classifier.load(args.model, device="cpu", accelerate=False)
    pools = load_pools(args, clf)
    labs = sorted({p.lab for p in pools if not p.shifted})
    report: dict[str, Any] = {
        "model": str(args.model),
        "pools": {
            p.name: {"lab": p.lab, "cells": len(p.cells), "groups": len(set(p.groups))}
            for p in pools
        },
        "quantile": args.quantile,
        "sizes": sorted(set(args.sizes)),
        "draws": args.draws,
        "designs": {},
    }
    for design in args.designs:
        t = time.time()
        report["designs"][design] = folds = {}
        for lab in labs:
            times = args.bootstrap if design in args.bootstrap_designs else 0
            folds[f"without {lab}"] = run_fold(
                DESIGNS[design], pools, lab, clf.classes, args, bootstrap=times
            )
        print(f"{design}: {time.time() - t:.0f}s " + summary_line(folds), flush=True)
    if args.ship:
        guard, info = ship_guard(args.ship, pools, clf.classes, args)
        report["shipped"] = info
        if args.out:
            ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
            before = sha256_of(args.model)
            ckpt["ood"] = guard.to_dict()
            summary = {k: v for k, v in info.items() if k != "design"}
            fold = report["designs"].get(args.ship, {}).get(f"without {other_lab(pools)}")
            if fold is not None:
                summary["measured"] = {
                    k: {"false_alarm": v["false_alarm"], "detected": v["detected"]}
                    for k, v in fold.items()
                    if k.startswith("batch_")
                }
            ckpt["metrics"] = {**ckpt.get("metrics", {}), "guard": {"design": args.ship, **summary}}
            atomic_save(ckpt, args.out)
            report["shipped"] |= {"model_sha256_before": before, "out": str(args.out)}
            report["shipped"]["out_sha256"] = sha256_of(args.out)
        print(f"shipped {args.ship}: thresholds {guard.thresholds}", flush=True)
    report["seconds"] = round(time.time() - t0, 1)
    report["command"] = "python -m ml.guard_study " + " ".join(command_args(args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def other_lab(pools: Sequence[Pool]) -> str:
    """The lab the model's own fold leaves out (the first lab not the model's)."""
    model_lab = next(p.lab for p in pools if p.seen)
    return next(p.lab for p in pools if p.lab != model_lab and not p.shifted)


def summary_line(folds: dict[str, Any]) -> str:
    parts = []
    for fold, r in folds.items():
        for key in (k for k in r if k.startswith("batch_")):
            e = r[key]
            parts.append(
                f"[{fold} {key}: fa max {max(e['false_alarm'].values()):.3f}, "
                f"det min {min(e['detected'].values()):.3f}]"
            )
    return " ".join(parts)


def command_args(args: argparse.Namespace) -> list[str]:
    parts = [f"--model {args.model}", f"--data {args.data}", f"--model-lab {args.model_lab}"]
    parts += [f"--lab {lab}" for lab in args.lab]
    parts += [
        f"--shifts {' '.join(args.shifts)}",
        f"--shift-cells {args.shift_cells}",
        f"--fit-per-class {args.fit_per_class}",
        f"--quantile {args.quantile}",
        f"--sizes {' '.join(map(str, args.sizes))}",
        f"--draws {args.draws}",
        f"--seed {args.seed}",
    ]
    if args.bootstrap_designs:
        parts.append(f"--bootstrap {args.bootstrap} --bootstrap-designs")
        parts += [f'"{d}"' for d in args.bootstrap_designs]
    if args.ship:
        parts.append(f'--ship "{args.ship}"' + (f" --out {args.out}" if args.out else ""))
    return parts


if __name__ == "__main__":
    main(get_args_parser().parse_args())
