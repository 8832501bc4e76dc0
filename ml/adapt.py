"""Cheap adaptation of a trained classifier to one lab, from the lab's own cells (issue 24).

Each method costs seconds on a CPU, so a worker can run it on a lab's reviewed cells:

- **Test-time BatchNorm statistics** (`recalibrate_batchnorm`, `with_model`): the running
  means and variances of every BatchNorm layer re-estimated on the lab's cells, the weights
  unchanged. Tsutsui et al. (2023) name BN statistics as a main cause of the accuracy drop of
  blood-cell classifiers across labs. Needs no labels: any of the lab's uploaded cells will do.
- **Reinhard stain normalisation** (`ml.stain`: `StainStats.of`, `reinhard`;
  `ml.inference.Classifier` applies the same function): each pixel's colour moved in
  Reinhard et al.'s (2001) l-alpha-beta space so that the lab's pooled per-channel mean and
  standard deviation become the training stain's. The statistics are pooled over many of the
  lab's pictures, not taken per picture: a per-picture mapping would wash out the colour of an
  eosinophil's granules, which is what tells it apart.
- **A head on the lab's reviewed cells' features** (`FeatureHead`): `prototype_head` (centred
  cosine similarity to each class's mean feature; Snell et al. 2017, Wang et al. 2019's
  SimpleShot) or `logistic_head` (the model's own classifier refitted on the reviewed cells,
  pulled towards its trained weights so a handful of cells cannot undo it).
- **More views** (`ml.views`: `VIEWS`, `view`): the dihedral flips/rotations of the input
  square; features averaged over views at prediction, every view a training sample for a
  head.
- **A deeper fine-tune** (`prefix`, `Tail`, `fine_tune_tail`): the last inverted-residual
  blocks and the classifier trained on the reviewed cells (every view a sample, the
  activations shifted by a position as augmentation, L2-SP towards the trained weights), the
  first blocks frozen, so their output is computed once per cell and view; BatchNorm keeps
  the statistics it was given (the lab's, from `recalibrate_batchnorm`, first). Tens of
  seconds on one CPU core for a few hundred samples.
- **A conservative auto-accept threshold** (`conservative_threshold`): the lowest confidence
  above which the lower one-sided Clopper-Pearson bound of the accuracy of held-out reviewed
  cells is at least the target (99 %), thresholds tested in a fixed order so the choice among
  many does not make the bound optimistic. It says how many cells it rests on, and gives none
  when there are too few (a 95 % bound of 99 % needs at least 299 cells, all right).

The portal's adaptation runs the best of them (`adapt_to_cells`, `adapt_folder`): the lab's
BatchNorm statistics or Reinhard normalisation towards the training stain, whichever gets more
reviewed cells right out of fold, the logistic head on 4 views, the temperature, the
conservative threshold and a refitted batch guard, written into a checkpoint whose `views` and
`stain_source`/`stain_target` `ml.inference.Classifier` applies.

`python -m ml.adapt_study` measures every method on the leave-one-lab-out folds the shared
data allows (docs/MODELS.md, "Adapting with few reviewed cells").
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from scipy.stats import beta
from torch import nn

from ml.checkpoint import IDENTITY_ONLY, read_metadata, save_checkpoint, sha256_of
from ml.data import list_samples
from ml.fit import fit_temperature_over
from ml.inference import Classifier, PooledFeatures
from ml.ood import fit_guard
from ml.stain import StainStats
from ml.views import VIEWS, check_views, view_batch

# Test-time BatchNorm statistics --------------------------------------------------------------


M = TypeVar("M", bound=nn.Module)


def recalibrate_batchnorm(
    model: M, batches: Iterable[torch.Tensor], *, source_weight: float = 0.0
) -> M:
    """A copy of model whose BatchNorm running statistics are those of `batches` (the lab's
    preprocessed cells), blended with the trained ones by source_weight (0: the lab's alone).

    Every other weight is unchanged; the copy is in eval mode. Each layer's statistics are the
    average over the batches (momentum None), so the order and size of batches barely matter,
    but a batch needs at least two cells.
    """
    if not 0.0 <= source_weight <= 1.0:
        raise ValueError(f"source_weight {source_weight} is not in [0, 1]")
    adapted = copy.deepcopy(model).eval()
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    trained = {}
    for m in norms:
        if m.running_mean is None or m.running_var is None:
            continue  # a BN layer without running statistics uses the batch's own anyway
        trained[m] = (m.running_mean.clone(), m.running_var.clone(), m.momentum)
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()  # only the BN layers: dropout and the rest stay in eval mode
    seen = 0
    with torch.no_grad():
        for x in batches:
            if len(x) < 2:
                continue  # one cell has no variance
            adapted(x.float())
            seen += len(x)
    if seen == 0:
        raise ValueError("no batch of at least two cells to estimate BatchNorm statistics on")
    for m, (mean, var, momentum) in trained.items():
        assert m.running_mean is not None  # kept above: the layer has running statistics
        assert m.running_var is not None
        m.running_mean.mul_(1 - source_weight).add_(source_weight * mean)
        m.running_var.mul_(1 - source_weight).add_(source_weight * var)
        m.momentum = momentum
        m.eval()
    return adapted


def with_model(clf: Classifier, model: nn.Module) -> Classifier:
    """The same classifier (classes, preprocessing, temperature, threshold) with another
    network of the same architecture, e.g. `recalibrate_batchnorm`'s copy. No batch guard: the
    guard was fitted on the original network's features."""
    out = copy.copy(clf)
    out.model = out.eager = model.to(clf.device).eval()
    out.engine = "eager"
    out.feature_model = PooledFeatures(model.get_submodule("features"))
    out.feature_engine = "eager"
    out.ood = None
    return out


# Heads on the lab's reviewed cells' features -------------------------------------------------


@dataclass
class FeatureHead:
    """A linear head on pooled features: logits = scale * (W z + b), z the features (centred
    and L2-normalised first when `normalise`), softmax over the `allowed` classes only."""

    weight: torch.Tensor  # C x D
    bias: torch.Tensor  # C
    allowed: torch.Tensor  # C, bool
    centre: torch.Tensor | None = None  # D, subtracted before normalising
    normalise: bool = False
    scale: float = 1.0

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        z = features.float()
        if self.centre is not None:
            z = z - self.centre
        if self.normalise:
            z = nn.functional.normalize(z, dim=1)
        out = self.scale * (z @ self.weight.T + self.bias)
        return out.masked_fill(~self.allowed, float("-inf"))

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(features), dim=1)


def _allowed(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    allowed = torch.zeros(num_classes, dtype=torch.bool)
    allowed[sorted(set(labels.tolist()))] = True
    return allowed


def prototype_head(
    features: torch.Tensor, labels: torch.Tensor, *, num_classes: int, scale: float = 16.0
) -> FeatureHead:
    """Nearest class mean by cosine similarity, the features centred on the reviewed cells'
    mean first (post-ReLU features all point one way; centring spreads them). Only classes
    with reviewed cells can be predicted. scale sets how peaked the softmax is (it does not
    change the predicted class, and the auto-accept threshold is fitted on its output)."""
    z = features.float()
    centre = z.mean(0)
    zn = nn.functional.normalize(z - centre, dim=1)
    weight = torch.zeros(num_classes, z.shape[1])
    for c in sorted(set(labels.tolist())):
        weight[c] = nn.functional.normalize(zn[labels == c].mean(0), dim=0)
    return FeatureHead(
        weight=weight,
        bias=torch.zeros(num_classes),
        allowed=_allowed(labels, num_classes),
        centre=centre,
        normalise=True,
        scale=scale,
    )


def logistic_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    init_weight: torch.Tensor,
    init_bias: torch.Tensor,
    anchor: float = 1e-2,
    max_iter: int = 100,
) -> FeatureHead:
    """The model's linear classifier refitted on the reviewed cells (multinomial logistic
    regression, L-BFGS), penalised by anchor * ||W - W0||^2 so it stays near the trained
    weights W0 (L2-SP: Li et al. 2018). The softmax and the prediction are over the classes
    with reviewed cells only: a class the lab did not review is not taught as absent, and is
    not predicted."""
    num_classes = init_weight.shape[0]
    allowed = _allowed(labels, num_classes)
    w0, b0 = init_weight.detach().float(), init_bias.detach().float()
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    x = features.float()
    optimiser = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = (x @ w.T + b).masked_fill(~allowed, float("-inf"))
        loss = nn.functional.cross_entropy(logits, labels) + anchor * (w - w0).pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(closure)  # type: ignore[no-untyped-call]
    return FeatureHead(weight=w.detach(), bias=b.detach(), allowed=allowed)


# A conservative auto-accept threshold ---------------------------------------------------------


def clopper_pearson_lower(right: int, cells: int, *, alpha: float = 0.05) -> float:
    """One-sided lower (1 - alpha) Clopper-Pearson bound of a proportion, right of cells."""
    if cells <= 0 or right <= 0:
        return 0.0
    return float(beta.ppf(alpha, right, cells - right + 1))


def cells_needed(target: float, *, alpha: float = 0.05) -> int:
    """The fewest cells, all right, whose lower bound reaches target: (1 - alpha) confidence
    that the accuracy is at least target takes n with target^n <= alpha."""
    return math.ceil(math.log(alpha) / math.log(target))


@dataclass(frozen=True)
class AcceptThreshold:
    """Auto-accept a cell when its confidence is at least `threshold` (None: never)."""

    threshold: float | None
    cells: int  # held-out reviewed cells it was fitted on
    above: int  # of those, at or above the threshold
    right_above: int
    lower_bound: float | None  # Clopper-Pearson lower bound of the accuracy above it
    target: float
    alpha: float
    none_because: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "threshold": self.threshold,
            "cells": self.cells,
            "above": self.above,
            "right_above": self.right_above,
            "lower_bound": self.lower_bound,
            "target": self.target,
            "alpha": self.alpha,
            "none_because": self.none_because,
        }


def conservative_threshold(
    confidence: npt.ArrayLike,
    correct: npt.ArrayLike,
    *,
    target: float = 0.99,
    alpha: float = 0.05,
) -> AcceptThreshold:
    """The lowest confidence threshold whose held-out cells above it have a lower one-sided
    (1 - alpha) Clopper-Pearson bound of accuracy of at least `target`.

    The cells must not have trained the model that gave the confidences. Candidate thresholds
    are the cells' confidences from the highest down, starting where enough cells are above
    for the bound to be able to reach the target (`cells_needed`); each is tested in turn and
    the first failure stops the search (fixed-sequence testing: the order depends only on the
    confidences, not on which cells are right, so testing many thresholds does not make the
    bound optimistic). None when no threshold passes; with fewer than `cells_needed` cells
    that is certain, and none_because says so.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if conf.shape != ok.shape:
        raise ValueError("confidence and correct differ in length")
    n, need = len(conf), cells_needed(target, alpha=alpha)

    def none(why: str) -> AcceptThreshold:
        return AcceptThreshold(None, n, 0, 0, None, target, alpha, why)

    if n < need:
        return none(
            f"{n} held-out cells: a {1 - alpha:.0%} lower bound of {target:.0%} needs at "
            f"least {need}, all right"
        )
    order = np.argsort(-conf, kind="stable")
    conf_sorted, right_cum = conf[order], np.cumsum(ok[order])
    best: AcceptThreshold | None = None
    k = need - 1
    while k < n:
        # Cells tied with the k-th confidence are all above the same threshold.
        while k + 1 < n and conf_sorted[k + 1] == conf_sorted[k]:
            k += 1
        above, right = k + 1, int(right_cum[k])
        bound = clopper_pearson_lower(right, above, alpha=alpha)
        if bound < target:
            break
        best = AcceptThreshold(float(conf_sorted[k]), n, above, right, bound, target, alpha)
        k += 1
    if best is None:
        return none(
            f"no threshold: the {need} most confident of {n} held-out cells are not "
            f"{target:.0%} right with {1 - alpha:.0%} confidence"
        )
    return best


def empirical_threshold(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, *, target: float = 0.99
) -> float | None:
    """The lowest threshold whose cells above it are at least target right, as measured
    (no bound): what `ml.train` fits on a val split. Optimistic on few cells; kept to show by
    how much against `conservative_threshold`."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    order = np.argsort(-conf, kind="stable")
    acc = np.cumsum(ok[order]) / np.arange(1, len(conf) + 1)
    passing = np.nonzero(acc >= target)[0]
    if len(passing) == 0:
        return None
    return float(conf[order][passing[-1]])


# The portal's adaptation: the best measured few-cell method as a checkpoint ------------------

FEW_CELL_METHOD = "few-cell"
# The checkpoint's `threshold` when no trustworthy auto-accept threshold could be earned: above
# every confidence (a probability is at most 1), so under the portal's one rule (a confidence
# below the threshold is unidentified) the model auto-accepts nothing. None would mean the
# opposite: every cell accepted.
NO_AUTO_ACCEPT = 2.0
# The logit bias of a class the lab has no reviewed cell of: the adapted model never predicts
# it (the study's heads predict only the reviewed classes), and its probability is 0.
ABSENT_CLASS_BIAS = -1e4


# The candidates `adapt_to_cells` chooses between by the reviewed cells' out-of-fold accuracy:
# the lab's BatchNorm statistics on the pictures as they are (best on the real other lab,
# bccd), or Reinhard normalisation towards the training stain with the trained statistics
# (best on the synthetic stain and yellow labs). docs/MODELS.md, "Second study".
LAB_BN, REINHARD = "lab-bn", "reinhard"
CANDIDATES = (LAB_BN, REINHARD)
CANDIDATE_TEXT = {
    LAB_BN: "the lab's BatchNorm statistics, pictures as they are",
    REINHARD: "Reinhard normalisation towards the training stain, the trained BatchNorm statistics",
}


@dataclass(frozen=True)
class FewCellOptions:
    """How `adapt_to_cells` adapts: each of `candidates` (LAB_BN: the lab's BatchNorm
    statistics, blended with the trained ones by bn_source_weight; REINHARD: the pictures
    Reinhard-normalised towards the training stain, the trained statistics) gets the anchored
    logistic head (`logistic_head`: anchor, max_iter) fitted on the reviewed cells in every
    one of `views` (which the checkpoint then averages at prediction), and the one whose
    out-of-fold predictions (oof_folds) are right most often is kept; the auto-accept
    threshold (`conservative_threshold`: target, alpha) on its out-of-fold predictions; the
    batch guard fitted on the reviewed cells less guard_calibration_share of each class
    (rounded up: 10 cells a class of 4 classes give 12 to calibrate on, at least the 10
    `ml.ood.fit_guard` needs), calibrated on those."""

    candidates: tuple[str, ...] = CANDIDATES
    bn_source_weight: float = 0.0
    views: tuple[str, ...] = VIEWS
    anchor: float = 1e-2
    # L-BFGS iterations of the head: 30, as measured by ml.adapt_study (LOGISTIC_ITER).
    max_iter: int = 30
    oof_folds: int = 5
    target: float = 0.99
    alpha: float = 0.05
    guard_calibration_share: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        check_views(self.views)
        unknown = [c for c in self.candidates if c not in CANDIDATES]
        if unknown or not self.candidates:
            raise ValueError(f"candidates {list(self.candidates)}: want some of {CANDIDATES}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "candidates": list(self.candidates), "views": list(self.views)}


def _linear_classifier(model: nn.Module) -> nn.Linear:
    """The trained linear classifier on the pooled features (mobilenet_v2: Dropout, Linear)."""
    linears = [m for m in model.get_submodule("classifier").modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no linear classifier to refit")
    return linears[-1]


def _stratified_folds(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """A fold number per cell, each class's cells spread over the folds in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    fold = torch.zeros(len(labels), dtype=torch.long)
    for c in sorted(set(labels.tolist())):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        fold[idx] = torch.arange(len(idx)) % folds
    return fold


def _features(
    clf: Classifier, pictures: Sequence[Image.Image], names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Pooled features of the pictures in each of the views `names`, 64 pictures at a time.
    Each picture is fitted and stain-normalised once; the views are turned on its tensor
    (`view_batch`: the same tensor as turning the picture, bit for bit, and the stain
    mapping is per pixel, so it commutes with them)."""
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for s in range(0, len(pictures), 64):
        squares = [clf.fit_to_input(p.convert("RGB")) for p in pictures[s : s + 64]]
        x = clf.to_input_batch(squares)
        for name in names:
            out[name].append(clf.embed(view_batch(x, name)))
    return {name: torch.cat(parts) for name, parts in out.items()}


def trained_stain(init: str | os.PathLike[str]) -> StainStats | None:
    """The stain the checkpoint `init` was trained on, if known: its `stain_target` (an adapted
    checkpoint carries its base's), else the file beside it named like it with `.stain.json`
    (`ml/weights/pbc8-mobilenetv2.stain.json`: `python -m ml.adapt_check --write-train-stain`),
    else None."""
    meta = read_metadata(init)
    if meta.stain_target is not None:
        return meta.stain_target
    beside = Path(init).with_suffix(".stain.json")
    if beside.is_file():
        return StainStats.from_dict(json.loads(beside.read_text()))
    return None


@dataclass
class _Fitted:
    """One candidate fitted on the reviewed cells: its network (the head written into its
    classifier layer by the caller), stain, final head and out-of-fold scores."""

    network: nn.Module
    stain: tuple[StainStats, StainStats] | None
    identity: torch.Tensor  # N x D features of the picture as is: the guard's
    head: FeatureHead
    oof_logits: torch.Tensor  # N x C, each cell scored by a head fitted without it
    temperature: float
    confidence: torch.Tensor
    right: torch.Tensor
    log_loss: float

    def summary(self) -> dict[str, Any]:
        return {
            "oof_accuracy": float(self.right.float().mean()),
            "oof_right": int(self.right.sum()),
            "oof_cells": len(self.right),
            "oof_log_loss": self.log_loss,
            "temperature": self.temperature,
        }


def _fit_candidate(
    clf: Classifier, pictures: Sequence[Image.Image], y: torch.Tensor, options: FewCellOptions
) -> _Fitted:
    """The logistic head on every view of the reviewed cells through `clf` (its network and
    stain), with its out-of-fold logits (the mean over the views of each cell's features, as
    `Classifier.predict_logits` will average them) and their temperature."""
    per_view = _features(clf, pictures, (*options.views, *({"identity"} - set(options.views))))
    identity = per_view["identity"]
    views = torch.stack([per_view[v] for v in options.views])
    mean = views.mean(0)
    linear = _linear_classifier(clf.eager)
    w0, b0 = linear.weight.detach().float().clone(), linear.bias.detach().float().clone()

    def fit(selected: torch.Tensor) -> FeatureHead:
        x = views[:, selected].reshape(-1, views.shape[-1])
        return logistic_head(
            x,
            y[selected].repeat(len(options.views)),
            init_weight=w0,
            init_bias=b0,
            anchor=options.anchor,
            max_iter=options.max_iter,
        )

    head = fit(torch.ones(len(y), dtype=torch.bool))
    allowed = head.allowed
    fold = _stratified_folds(y, options.oof_folds, options.seed)
    oof_logits = torch.zeros(len(y), len(clf.classes))
    for f in range(options.oof_folds):
        held = fold == f
        if held.any():
            oof = fit(~held)
            oof_logits[held] = mean[held] @ oof.weight.T + oof.bias
    temperature = fit_temperature_over(oof_logits, y, known=allowed)
    scaled = (oof_logits / temperature).masked_fill(~allowed, float("-inf"))
    confidence, predicted = torch.softmax(scaled, dim=1).max(1)
    log_loss = float(nn.functional.cross_entropy(scaled, y))
    return _Fitted(
        network=clf.eager,
        stain=clf.stain,
        identity=identity,
        head=head,
        oof_logits=oof_logits,
        temperature=temperature,
        confidence=confidence,
        right=predicted == y,
        log_loss=log_loss,
    )


def choice_reason(chosen: str, fitted: dict[str, dict[str, Any]]) -> str:
    """Why `chosen` won, in the terms of `fitted` (each candidate's `_Fitted.summary`)."""
    mine = fitted[chosen]
    others = [(k, v) for k, v in fitted.items() if k != chosen]
    if not others:
        return f"{chosen} was the only candidate"
    parts = [
        f"{k}: {v['oof_right']}/{v['oof_cells']}, log-loss {v['oof_log_loss']:.3f}"
        for k, v in others
    ]
    tie = all(v["oof_right"] == mine["oof_right"] for _, v in others)
    return (
        f"{chosen} had {mine['oof_right']}/{mine['oof_cells']} reviewed cells right out of "
        f"fold (log-loss {mine['oof_log_loss']:.3f}) against "
        + "; ".join(parts)
        + (": a tie, broken by the lower log-loss" if tie else "")
    )


def adapt_to_cells(
    *,
    init: str | os.PathLike[str],
    pictures: Sequence[Image.Image],
    labels: Sequence[str],
    out: str | os.PathLike[str],
    options: FewCellOptions = FewCellOptions(),
    bn_pictures: Sequence[Image.Image] | None = None,
    train_stain: StainStats | None = None,
) -> dict[str, Any]:
    """Adapt the checkpoint `init` to a lab's reviewed cells (pictures and their classes) with
    the best few-cell methods measured (docs/MODELS.md, "Adapting with few reviewed cells",
    "Second study"), and write it to `out` in the checkpoint format `ml.inference.Classifier`
    loads. Returns its metrics (also in the file).

    - Two candidates (options.candidates): LAB_BN, the BatchNorm running statistics
      re-estimated on `bn_pictures` (default: the reviewed pictures; no labels needed), the
      pictures as they are; REINHARD, the pictures Reinhard-normalised from the lab's stain
      (pooled over the same unlabelled pictures) towards `train_stain` (default:
      `trained_stain(init)`; without one this candidate is skipped, and `metrics["skipped"]`
      says why), the trained statistics. Every other trunk weight is unchanged.
    - For each, the classifier layer is the logistic head fitted on every one of
      options.views of the reviewed cells; each cell is also scored by a head fitted without
      it (5 folds) on its features averaged over the views. The candidate with the most
      reviewed cells right out of fold is kept (a tie: the lower out-of-fold log-loss at its
      temperature, then the order of options.candidates); `metrics["candidates"]`,
      `["chosen"]` and `["chosen_because"]` record it. The checkpoint gets its network, its
      stain (`stain_source`, `stain_target`) and `views`, which `Classifier` averages.
    - A class without a reviewed cell keeps its row but gets ABSENT_CLASS_BIAS (never
      predicted). The classes, input size, normalisation and resize mode are `init`'s.
    - The chosen candidate's temperature is fitted on its out-of-fold logits, and the
      auto-accept threshold is `conservative_threshold` of their out-of-fold confidences:
      with too few cells there is none, the checkpoint's `threshold` is NO_AUTO_ACCEPT and
      `metrics["auto_accept"]` says why.
    - The batch guard is refitted on the chosen network's features of the reviewed cells as
      `Classifier.embed` sees them (stain-normalised if REINHARD, the identity view;
      `ml.ood.fit_guard`), as `ml.train --init` does; with too few cells there is none and
      `metrics["guard"]` says why.
    """
    t_start = time.time()
    if len(pictures) != len(labels):
        raise ValueError(f"{len(pictures)} pictures but {len(labels)} labels")
    meta = read_metadata(init)
    base = Classifier.load(init, device="cpu", accelerate=False)
    # The candidates set their own stain; what `init` has (if adapted before) is not reused.
    base.stain, base.views = None, IDENTITY_ONLY
    index = {c.lower(): i for i, c in enumerate(base.classes)}
    unknown = sorted({c for c in labels if c.lower() not in index})
    if unknown:
        raise ValueError(f"classes {unknown} are not among the model's {base.classes}")
    y = torch.tensor([index[c.lower()] for c in labels], dtype=torch.long)
    if len(set(y.tolist())) < 2:
        raise ValueError("reviewed cells of at least two classes are needed")

    unlabelled = list(bn_pictures) if bn_pictures is not None else list(pictures)
    target = train_stain if train_stain is not None else trained_stain(init)
    fitted: dict[str, _Fitted] = {}
    skipped: dict[str, str] = {}
    lab_stain: StainStats | None = None
    for name in options.candidates:
        if name == LAB_BN:
            batches = [
                base.preprocess(unlabelled[s : s + 32]) for s in range(0, len(unlabelled), 32)
            ]
            network = recalibrate_batchnorm(
                base.eager, batches, source_weight=options.bn_source_weight
            )
            clf = with_model(base, network)
        else:
            if target is None:
                skipped[name] = (
                    "the base model's training stain is not known (no stain_target in it and "
                    "no .stain.json beside it)"
                )
                continue
            lab_stain = StainStats.of(unlabelled)
            clf = with_model(base, copy.deepcopy(base.eager))
            clf.stain = (lab_stain, target)
        fitted[name] = _fit_candidate(clf, pictures, y, options)
    # Most right out of fold; then the lower log-loss; then the order of the options.
    order = {name: k for k, name in enumerate(options.candidates)}
    chosen = min(
        fitted,
        key=lambda k: (-int(fitted[k].right.sum()), fitted[k].log_loss, order[k]),
    )
    best = fitted[chosen]
    network, head, temperature = best.network, best.head, best.temperature
    allowed = head.allowed
    accept = conservative_threshold(
        best.confidence.tolist(), best.right.tolist(), target=options.target, alpha=options.alpha
    )

    linear = _linear_classifier(network)
    with torch.no_grad():
        linear.weight.copy_(head.weight)
        linear.bias.copy_(torch.where(allowed, head.bias, torch.tensor(ABSENT_CLASS_BIAS)))

    calibrate = torch.zeros(len(y), dtype=torch.bool)
    generator = torch.Generator().manual_seed(options.seed)
    for c in sorted(set(y.tolist())):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        calibrate[idx[: math.ceil(options.guard_calibration_share * len(idx))]] = True
    eval_x = best.identity
    guard, guard_info = fit_guard(
        eval_x[~calibrate], y[~calibrate], eval_x[calibrate], seed=options.seed
    )

    per_class = {base.classes[c]: int((y == c).sum()) for c in sorted(set(y.tolist()))}
    auto_accept = {
        **accept.to_dict(),
        "cells_needed": cells_needed(options.target, alpha=options.alpha),
        "rule": "lowest confidence whose out-of-fold reviewed cells above it have a "
        f"{1 - options.alpha:.0%} lower Clopper-Pearson bound of at least {options.target:.0%}",
    }
    summaries = {k: {**v.summary(), "method": CANDIDATE_TEXT[k]} for k, v in fitted.items()}
    metrics: dict[str, Any] = {
        "method": FEW_CELL_METHOD,
        "options": options.to_dict(),
        "n_train": len(y),
        "reviewed_per_class": per_class,
        "chosen": chosen,
        "chosen_because": choice_reason(chosen, summaries),
        "candidates": summaries,
        "skipped": skipped,
        "views": list(options.views),
        # The unlabelled pictures the lab's BatchNorm or stain statistics were taken on.
        "statistics_cells": len(unlabelled),
        "bn_cells": len(unlabelled) if chosen == LAB_BN else 0,
        "stain": None
        if best.stain is None
        else {"source": best.stain[0].to_dict(), "target": best.stain[1].to_dict()},
        "reviewed_oof": {
            "n": len(y),
            "accuracy": float(best.right.float().mean()),
            "folds": options.oof_folds,
        },
        "temperature": temperature,
        "auto_accept": auto_accept,
        "guard": guard_info,
        "train_seconds": round(time.time() - t_start, 1),
    }
    recipe = {
        "method": FEW_CELL_METHOD,
        "init": str(init),
        "init_sha256": sha256_of(init),
        "options": options.to_dict(),
    }
    save_checkpoint(
        out,
        network,
        arch=meta.arch,
        classes=meta.classes,
        input_size=meta.input_size,
        mean=meta.mean,
        std=meta.std,
        recipe=recipe,
        metrics=metrics,
        temperature=temperature,
        threshold=NO_AUTO_ACCEPT if accept.threshold is None else accept.threshold,
        resize=meta.resize,
        ood=None if guard is None else guard.to_dict(),
        views=options.views,
        stain=best.stain,
    )
    return metrics


def adapt_folder(
    *,
    init: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: FewCellOptions = FewCellOptions(),
) -> dict[str, Any]:
    """`adapt_to_cells` on a folder of reviewed cells, one sub-folder per class (the portal's
    export: `data/<class>/<picture>`)."""
    found = list_samples(data)
    pictures = []
    for path, _ in found:
        with Image.open(path) as img:
            pictures.append(img.convert("RGB"))
    labels = [label for _, label in found]
    return adapt_to_cells(init=init, pictures=pictures, labels=labels, out=out, options=options)


# A deeper fine-tune: the last blocks and the classifier ---------------------------------------


def prefix(model: nn.Module, start: int) -> nn.Sequential:
    """`model.features[:start]` (the same modules, not a copy): the frozen part of a deep
    fine-tune, whose output a study computes once per picture and view and keeps."""
    blocks = list(model.get_submodule("features").children())
    if not 0 < start < len(blocks):
        raise ValueError(f"start {start} is not inside the {len(blocks)} feature blocks")
    return nn.Sequential(*blocks[:start])


def _pool(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)


class Tail(nn.Module):
    """A copy of the part of a `features`-then-`classifier` network (mobilenet_v2,
    efficientnet_lite0) from `features[start]` on: the last blocks, the global average pool and
    the classifier. Its input is `prefix(model, start)`'s output."""

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        blocks = list(prefix(model, start).children())  # checks start
        rest = list(model.get_submodule("features").children())[len(blocks) :]
        self.start = start
        self.blocks = copy.deepcopy(nn.Sequential(*rest))
        self.classifier = copy.deepcopy(model.get_submodule("classifier"))

    def pooled(self, x: torch.Tensor, *, taps: Iterable[int] = ()) -> torch.Tensor:
        """The classifier's input (pooled last block), then, for each of `taps` (indices of
        `model.features`; start - 1 is the tail's input), that block's pooled output."""
        wanted = set(taps)
        extra = [_pool(x)] if self.start - 1 in wanted else []
        for i, block in enumerate(self.blocks, start=self.start):
            x = block(x)
            if i in wanted:
                extra.append(_pool(x))
        return torch.cat([_pool(x), *extra], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.pooled(x))
        return out

    def linear(self) -> nn.Linear:
        """The classifier's last linear layer (mobilenet_v2: Dropout then Linear)."""
        return [m for m in self.classifier.modules() if isinstance(m, nn.Linear)][-1]


def shift_activations(x: torch.Tensor, most: int, generator: torch.Generator) -> torch.Tensor:
    """Each map of an N x C x H x W batch moved by up to `most` positions each way (edges
    repeated): a cell's place in the square carries no label, and it is the augmentation left
    once the prefix's output is fixed."""
    if most <= 0:
        return x
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (most, most, most, most), mode="replicate")
    dy = torch.randint(0, 2 * most + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * most + 1, (n,), generator=generator).tolist()
    return torch.stack(
        [padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))]
    )


@dataclass
class TunedTail:
    """A fine-tuned `Tail` predicting only the `allowed` classes (those with reviewed cells)."""

    tail: Tail
    allowed: torch.Tensor  # C, bool

    @torch.no_grad()
    def features(self, views: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """V x N x C x H x W prefix outputs (V views of N cells) -> N x D pooled features,
        averaged over the views."""
        self.tail.eval()
        pooled = torch.stack(
            [
                torch.cat(
                    [
                        self.tail.pooled(v[s : s + batch_size].float())
                        for s in range(0, v.shape[0], batch_size)
                    ]
                )
                for v in views
            ]
        )
        return pooled.mean(0)

    def head(self) -> FeatureHead:
        """The tuned classifier as a head on `features`."""
        linear = self.tail.linear()
        return FeatureHead(
            weight=linear.weight.detach().clone(),
            bias=linear.bias.detach().clone(),
            allowed=self.allowed,
        )

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        return self.head().probabilities(self.features(views))


def fine_tune_tail(
    tail: Tail,
    activations: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 80,
    batch_size: int = 32,
    lr: float = 3e-4,
    head_lr: float = 3e-3,
    anchor: float = 1e-3,
    shift: int = 1,
    seed: int = 0,
) -> TunedTail:
    """A copy of `tail` (its blocks and classifier) fine-tuned on the reviewed cells: their
    prefix outputs (`activations`, N x C x H x W, each view of a cell its own sample) and
    `labels` (N). Adam for `steps` batches drawn at random, the classifier at `head_lr`, the
    blocks at `lr`; the loss is cross-entropy over the reviewed classes only plus
    anchor * ||theta - theta0||^2 towards the trained weights (L2-SP, Li et al. 2018), so a
    few dozen cells cannot pull the blocks far. BatchNorm layers keep their statistics (the
    lab's, when `recalibrate_batchnorm` made the network: a batch of a few reviewed cells
    would give worse ones) and train only their scale and shift; the classifier's dropout is
    on. Augmentation: `shift_activations` by up to `shift` positions (the views are the
    flips and rotations)."""
    if len(activations) != len(labels) or len(labels) == 0:
        raise ValueError("one label for each of at least one sample")
    generator = torch.Generator().manual_seed(seed)
    tuned = copy.deepcopy(tail)
    start = [p.detach().clone() for p in tuned.parameters()]
    head_params = set(map(id, tuned.classifier.parameters()))
    optimiser = torch.optim.Adam(
        [
            {"params": [p for p in tuned.parameters() if id(p) not in head_params], "lr": lr},
            {"params": list(tuned.classifier.parameters()), "lr": head_lr},
        ]
    )
    num_classes = tuned.linear().out_features
    allowed = _allowed(labels, num_classes)
    tuned.eval()
    tuned.classifier.train()  # dropout on; every BatchNorm stays in eval mode
    x_all, y_all = activations.float(), labels.long()
    for _ in range(steps):
        idx = torch.randint(0, len(y_all), (min(batch_size, len(y_all)),), generator=generator)
        x = shift_activations(x_all[idx], shift, generator)
        logits = tuned(x).masked_fill(~allowed, float("-inf"))
        drift = sum((p - p0).pow(2).sum() for p, p0 in zip(tuned.parameters(), start, strict=True))
        loss = nn.functional.cross_entropy(logits, y_all[idx]) + anchor * drift
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    tuned.eval()
    return TunedTail(tail=tuned, allowed=allowed)
