"""Cheap adaptation of a trained classifier to one lab, from the lab's own cells (issue 24).

Each method costs seconds on a CPU, so a worker can run it on a lab's reviewed cells:

- **Test-time BatchNorm statistics** (`recalibrate_batchnorm`, `with_model`): the running
  means and variances of every BatchNorm layer re-estimated on the lab's cells, the weights
  unchanged. Tsutsui et al. (2023) name BN statistics as a main cause of the accuracy drop of
  blood-cell classifiers across labs. Needs no labels: any of the lab's uploaded cells will do.
- **Reinhard stain normalisation** (`StainStats.of`, `reinhard`): each pixel's colour moved in
  Reinhard et al.'s (2001) l-alpha-beta space so that the lab's pooled per-channel mean and
  standard deviation become the training stain's. The statistics are pooled over many of the
  lab's pictures, not taken per picture: a per-picture mapping would wash out the colour of an
  eosinophil's granules, which is what tells it apart.
- **A head on the lab's reviewed cells' features** (`FeatureHead`): `prototype_head` (centred
  cosine similarity to each class's mean feature; Snell et al. 2017, Wang et al. 2019's
  SimpleShot) or `logistic_head` (the model's own classifier refitted on the reviewed cells,
  pulled towards its trained weights so a handful of cells cannot undo it).
- **More views** (`VIEWS`, `view`): the dihedral flips/rotations of the input square; features
  averaged over views at prediction, every view a training sample for a head.
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

The portal's adaptation runs the best of them that the checkpoint format holds as it is
(`adapt_to_cells`, `adapt_folder`: the lab's BatchNorm statistics and the logistic head, the
temperature, the conservative threshold and a refitted batch guard written into an ordinary
checkpoint).

`python -m ml.adapt_study` measures every method on the leave-one-lab-out folds the shared
data allows (docs/MODELS.md, "Adapting with few reviewed cells").
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from scipy.stats import beta
from torch import nn

from ml.checkpoint import read_metadata, save_checkpoint, sha256_of
from ml.data import list_samples
from ml.fit import fit_temperature_over
from ml.inference import Classifier, PooledFeatures
from ml.ood import fit_guard

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


# Reinhard stain normalisation ----------------------------------------------------------------

# Reinhard et al. (2001): RGB -> LMS cone space, log10, then Ruderman's decorrelated l-alpha-beta.
_LMS_FROM_RGB = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]]
)
_LAB_FROM_LOGLMS = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
_RGB_FROM_LMS = np.linalg.inv(_LMS_FROM_RGB)
_LOGLMS_FROM_LAB = np.linalg.inv(_LAB_FROM_LOGLMS)
# Statistics are taken on a thumbnail: colour statistics need no detail, and it is 50x cheaper.
STATS_SIDE = 64


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 (or float 0-255) RGB -> l-alpha-beta (float64)."""
    a = np.clip(np.asarray(rgb, dtype=np.float64), 1.0, 255.0) / 255.0  # log of 0 is undefined
    lms = np.clip(a @ _LMS_FROM_RGB.T, 1e-6, None)
    lab: np.ndarray = np.log10(lms) @ _LAB_FROM_LOGLMS.T
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """l-alpha-beta -> H x W x 3 uint8 RGB (clipped)."""
    lms = np.power(10.0, lab @ _LOGLMS_FROM_LAB.T)
    rgb = lms @ _RGB_FROM_LMS.T * 255.0
    out: np.ndarray = np.clip(rgb, 0, 255).round().astype(np.uint8)
    return out


@dataclass(frozen=True)
class StainStats:
    """Per-channel mean and standard deviation in l-alpha-beta of a set of pictures."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, images: Iterable[Image.Image]) -> StainStats:
        """Pooled over every pixel of every picture (each shrunk to a thumbnail first)."""
        pixels = []
        for img in images:
            small = img.convert("RGB")
            small.thumbnail((STATS_SIDE, STATS_SIDE), Image.Resampling.BILINEAR)
            pixels.append(rgb_to_lab(np.asarray(small)).reshape(-1, 3))
        if not pixels:
            raise ValueError("no picture to take stain statistics of")
        lab = np.concatenate(pixels)
        m, s = lab.mean(0), lab.std(0)
        return cls(
            mean=(float(m[0]), float(m[1]), float(m[2])),
            std=(float(s[0]), float(s[1]), float(s[2])),
        )

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def reinhard(img: Image.Image, *, source: StainStats, target: StainStats) -> Image.Image:
    """img's colours moved so that pictures with `source` statistics get `target`'s."""
    lab = rgb_to_lab(np.asarray(img.convert("RGB")))
    src_m, src_s = np.array(source.mean), np.maximum(np.array(source.std), 1e-6)
    mapped = (lab - src_m) / src_s * np.array(target.std) + np.array(target.mean)
    return Image.fromarray(lab_to_rgb(mapped))


# More views -----------------------------------------------------------------------------------

# The dihedral views of a square: a cell on a slide has no up or left.
VIEWS = ("identity", "flip", "rot90", "transpose")
_TRANSPOSE = {
    "flip": Image.Transpose.FLIP_LEFT_RIGHT,
    "rot90": Image.Transpose.ROTATE_90,
    "transpose": Image.Transpose.TRANSPOSE,
}


def view(img: Image.Image, name: str) -> Image.Image:
    """One of VIEWS of a picture."""
    if name == "identity":
        return img
    if name not in _TRANSPOSE:
        raise ValueError(f"unknown view {name!r}; one of {VIEWS}")
    return img.transpose(_TRANSPOSE[name])


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


@dataclass(frozen=True)
class FewCellOptions:
    """How `adapt_to_cells` adapts: the lab's BatchNorm statistics (blended with the trained
    ones by bn_source_weight) and the anchored logistic head (`logistic_head`: anchor,
    max_iter) fitted on the reviewed cells in `views`; the auto-accept threshold
    (`conservative_threshold`: target, alpha) on their out-of-fold predictions (oof_folds);
    the batch guard fitted on the reviewed cells less guard_calibration_share of each class
    (rounded up: 10 cells a class of 4 classes give 12 to calibrate on, at least the 10
    `ml.ood.fit_guard` needs), calibrated on those."""

    lab_batchnorm: bool = True
    bn_source_weight: float = 0.0
    views: tuple[str, ...] = ("identity",)
    anchor: float = 1e-2
    # L-BFGS iterations of the head: 30, as measured by ml.adapt_study (LOGISTIC_ITER).
    max_iter: int = 30
    oof_folds: int = 5
    target: float = 0.99
    alpha: float = 0.05
    guard_calibration_share: float = 0.25
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "views": list(self.views)}


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


def _features(clf: Classifier, pictures: Sequence[Image.Image], name: str) -> torch.Tensor:
    """Pooled features of the pictures in one view, 64 at a time."""
    out = []
    for s in range(0, len(pictures), 64):
        squares = [clf.fit_to_input(p.convert("RGB")) for p in pictures[s : s + 64]]
        out.append(clf.embed(clf.to_input_batch([view(q, name) for q in squares])))
    return torch.cat(out)


def adapt_to_cells(
    *,
    init: str | os.PathLike[str],
    pictures: Sequence[Image.Image],
    labels: Sequence[str],
    out: str | os.PathLike[str],
    options: FewCellOptions = FewCellOptions(),
    bn_pictures: Sequence[Image.Image] | None = None,
) -> dict[str, Any]:
    """Adapt the checkpoint `init` to a lab's reviewed cells (pictures and their classes) with
    the best few-cell method measured (docs/MODELS.md, "Adapting with few reviewed cells":
    the lab's BatchNorm statistics and a logistic head), and write it to `out` in the
    checkpoint format `ml.inference.Classifier` loads. Returns its metrics (also in the file).

    - The BatchNorm running statistics are re-estimated on `bn_pictures` (default: the
      reviewed pictures; no labels needed), every other trunk weight unchanged.
    - The classifier layer is the logistic head fitted on the reviewed cells' features; a
      class without a reviewed cell keeps its row but gets ABSENT_CLASS_BIAS (never predicted).
      The classes, input size, normalisation and resize mode are `init`'s.
    - The temperature is fitted on the reviewed cells' out-of-fold logits (each cell scored by
      a head fitted without it), and the auto-accept threshold is `conservative_threshold` of
      their out-of-fold confidences: with too few cells there is none, the checkpoint's
      `threshold` is NO_AUTO_ACCEPT and `metrics["auto_accept"]` says why.
    - The batch guard is refitted on the adapted network's features (`ml.ood.fit_guard`), as
      `ml.train --init` does; with too few cells there is none and `metrics["guard"]` says why.
    """
    t_start = time.time()
    if len(pictures) != len(labels):
        raise ValueError(f"{len(pictures)} pictures but {len(labels)} labels")
    meta = read_metadata(init)
    clf = Classifier.load(init, device="cpu", accelerate=False)
    index = {c.lower(): i for i, c in enumerate(clf.classes)}
    unknown = sorted({c for c in labels if c.lower() not in index})
    if unknown:
        raise ValueError(f"classes {unknown} are not among the model's {clf.classes}")
    y = torch.tensor([index[c.lower()] for c in labels], dtype=torch.long)
    if len(set(y.tolist())) < 2:
        raise ValueError("reviewed cells of at least two classes are needed")

    network: nn.Module = copy.deepcopy(clf.eager).eval()
    if options.lab_batchnorm:
        stats = list(bn_pictures) if bn_pictures is not None else list(pictures)
        batches = [clf.preprocess(stats[s : s + 32]) for s in range(0, len(stats), 32)]
        network = recalibrate_batchnorm(clf.eager, batches, source_weight=options.bn_source_weight)
    adapted = with_model(clf, network)

    # Every view of every reviewed cell is a training sample; the eval view alone is what the
    # checkpoint will see, so the out-of-fold scores and the guard use it.
    eval_x = _features(adapted, pictures, "identity")
    views = torch.stack(
        [eval_x if v == "identity" else _features(adapted, pictures, v) for v in options.views]
    )
    linear = _linear_classifier(network)
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
            oof_logits[held] = eval_x[held] @ oof.weight.T + oof.bias
    temperature = fit_temperature_over(oof_logits, y, known=allowed)
    oof_probs = torch.softmax(
        (oof_logits / temperature).masked_fill(~allowed, float("-inf")), dim=1
    )
    confidence, predicted = oof_probs.max(1)
    right = predicted == y
    accept = conservative_threshold(
        confidence.tolist(), right.tolist(), target=options.target, alpha=options.alpha
    )

    with torch.no_grad():
        linear.weight.copy_(head.weight)
        linear.bias.copy_(torch.where(allowed, head.bias, torch.tensor(ABSENT_CLASS_BIAS)))

    calibrate = torch.zeros(len(y), dtype=torch.bool)
    generator = torch.Generator().manual_seed(options.seed)
    for c in sorted(set(y.tolist())):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        calibrate[idx[: math.ceil(options.guard_calibration_share * len(idx))]] = True
    guard, guard_info = fit_guard(
        eval_x[~calibrate], y[~calibrate], eval_x[calibrate], seed=options.seed
    )

    per_class = {clf.classes[c]: int((y == c).sum()) for c in sorted(set(y.tolist()))}
    auto_accept = {
        **accept.to_dict(),
        "cells_needed": cells_needed(options.target, alpha=options.alpha),
        "rule": "lowest confidence whose out-of-fold reviewed cells above it have a "
        f"{1 - options.alpha:.0%} lower Clopper-Pearson bound of at least {options.target:.0%}",
    }
    metrics: dict[str, Any] = {
        "method": FEW_CELL_METHOD,
        "options": options.to_dict(),
        "n_train": len(y),
        "reviewed_per_class": per_class,
        "bn_cells": (len(bn_pictures) if bn_pictures is not None else len(pictures))
        if options.lab_batchnorm
        else 0,
        "reviewed_oof": {
            "n": len(y),
            "accuracy": float(right.float().mean()),
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
