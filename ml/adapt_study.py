"""How far a few reviewed cells a class take a model in a lab it never saw: the adaptation
curve of `ml.adapt`'s methods on every leave-one-lab-out fold the shared data allows.

    nice -n 10 python -m ml.adapt_study --model ml/weights/pbc8-mobilenetv2.pt \\
        --pbc ../shared/data/pbc/dev --kaggle ../shared/data/kaggle-blood-cells/TRAIN \\
        --labs bccd yellow stain --cache-dir var/adapt-study --views 2 \\
        --heads base proto logistic --json ml/weights/trials/pbc8-adapt-study.json
    python -m ml.adapt_study --report ml/weights/trials/pbc8-adapt-study.json  # the tables

    # the second study (4 views, multi-layer head, deep fine-tune of features[14:]):
    nice -n 10 python -m ml.adapt_study --labs bccd yellow stain --variants bn reinhard \\
        --heads logistic multilayer deep --deep-variants bn --deep-labs bccd yellow \\
        --deep-ns 10 25 --json ml/weights/trials/pbc8-adapt-study-2.json

The labs (folds), each one the model never trained on:

- `bccd`: the Kaggle/BCCD lab (another hospital, camera and stain): one picture of each source
  cell of the Kaggle TRAIN folder (its files are ~35 augmented copies of each of ~280 cells;
  the number after the first underscore of a file name is the cell, and the counts per class,
  75 / 27 / 16 / 159, are BCCD's own). Few lymphocytes and monocytes: the curve's larger n
  are capped there (the JSON has the counts drawn).
- `stain`, `scale`, `blur`, `noise`: the model's own PBC val cells (never trained on) under one
  of `ml.guard.SHIFTS` (another stain batch, a lower magnification, out of focus, a noisy
  camera), --per-class cells a class.
- `yellow`: the same cells as a lab like the one issue 24 met (small yellow-stained pictures
  from another microscope and camera): a yellow background, a low-resolution camera (shrunk
  to 72 px and back), camera noise.

Each lab's cells are split once (--split-seed) into test cells (30 % of each class, at least
5) and a pool; for each seed, n reviewed cells a class are drawn from the pool (fewer where the
pool has fewer). Every figure is on the test cells, which nothing was fitted on. Methods: the
picture as is or Reinhard-normalised towards the training stain (lab statistics from the pool),
the trained BatchNorm statistics or the lab's (from the pool's pictures, no labels), 1 or 2+
views (`--views`), and a head: the model's own (`base`, restricted to the reviewed classes for
n > 0), `proto` or `logistic` (`ml.adapt`), `multilayer` (the logistic head on the pooled
features plus the pooled outputs of `--taps` blocks, z-scored on the lab's pool pictures), or
`deep` (`ml.adapt.fine_tune_tail`: features[--tail-from:] and the classifier fine-tuned on
every view of the reviewed cells; only on --deep-variants / --deep-labs / --deep-ns, since
each fit takes a minute of a shared CPU). The auto-accept threshold is fitted on the reviewed
cells' out-of-fold predictions (5 folds: each reviewed cell scored by a head not fitted on it):
`ml.adapt.conservative_threshold` (99 %, 95 % Clopper-Pearson) and, to show how optimistic it
is, the plain empirical one. At n = 0 the model's own threshold is used. The deep head's
out-of-fold fits (5 fine-tunes) are skipped where the reviewed cells are fewer than the 299 a
99 % bound needs (the conservative rule certainly gives no threshold there: recorded as such;
the empirical one is then not fitted).

The output of the first --tail-from feature blocks is computed once per lab, variant and view
and cached under --cache-dir (chunks: an interrupted run resumes); the pooled features are the
frozen tail's on it, and the feature heads then take seconds. One process, --threads (default 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml.adapt import (
    FeatureHead,
    Tail,
    cells_needed,
    conservative_threshold,
    empirical_threshold,
    fine_tune_tail,
    logistic_head,
    prefix,
    prototype_head,
    recalibrate_batchnorm,
    with_model,
)
from ml.checkpoint import sha256_of
from ml.data import list_samples
from ml.guard import SHIFTS, fit_subset, model_split
from ml.inference import Classifier
from ml.sources import Cell
from ml.stain import StainStats, reinhard
from ml.views import VIEWS, view

VARIANTS = ("plain", "bn", "reinhard", "reinhard+bn")
HEADS = ("base", "proto", "logistic", "multilayer", "deep")
# Heads whose out-of-fold fits cost minutes: skipped where no threshold could pass anyway.
SLOW_HEADS = ("deep",)
SYNTHETIC = ("stain", "scale", "blur", "noise", "yellow")
TEST_SHARE, MIN_TEST = 0.3, 5
OOF_FOLDS = 5
# L-BFGS iterations of the logistic head: on the shared 2-core machine 100 took seconds a fit,
# and the study fits thousands (each out-of-fold fold too).
LOGISTIC_ITER = 30
Shift = Callable[[Image.Image, np.random.Generator], Image.Image]


def _yellow_small(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another lab's small yellow-stained pictures: bright pixels tinted yellow, the picture
    shrunk to 72 px and back (a low-resolution camera), then camera noise."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    bright = np.clip((a.mean(axis=-1, keepdims=True) - 140.0) / 80.0, 0, 1)
    a = a * (1 - bright) + a * np.array([1.0, 0.92, 0.68], np.float32) * bright
    tinted = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8))
    w, h = tinted.size
    small = tinted.resize((72, max(1, round(72 * h / w))), Image.Resampling.BILINEAR)
    return SHIFTS["noise"](small.resize((w, h), Image.Resampling.BILINEAR), rng)


def shift_of(lab: str) -> Shift | None:
    if lab == "yellow":
        return _yellow_small
    return SHIFTS.get(lab)


# Labs -----------------------------------------------------------------------------------------


def kaggle_cells(root: Path, classes: Sequence[str]) -> list[Cell]:
    """One picture of each source cell of the Kaggle set (file `_<cell>_<copy>.jpeg`)."""
    first: dict[tuple[str, str], Path] = {}
    for path, folder in sorted(list_samples(root)):
        if folder not in classes:
            continue
        m = re.match(r"_(\d+)_", path.name)
        key = (folder, m.group(1) if m else path.stem)
        first.setdefault(key, path)
    return [Cell(p, c, "kaggle", f"kaggle:{c}:{k}") for (c, k), p in sorted(first.items())]


def split_lab(cells: Sequence[Cell], seed: int) -> tuple[list[int], list[int]]:
    """(test, pool) indices: TEST_SHARE of each class (at least MIN_TEST) to test on."""
    rng = np.random.default_rng(seed)
    test, pool = [], []
    for label in sorted({c.label for c in cells}):
        idx = [i for i, c in enumerate(cells) if c.label == label]
        rng.shuffle(idx)
        k = max(MIN_TEST, round(TEST_SHARE * len(idx)))
        test += idx[:k]
        pool += idx[k:]
    return sorted(test), sorted(pool)


def draw_reviewed(
    cells: Sequence[Cell], pool: Sequence[int], n: int, seed: int
) -> tuple[list[int], dict[str, int]]:
    """n cells a class from the pool (all of a class that has fewer), and the counts."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i in pool:
        by_class[cells[i].label].append(i)
    chosen, counts = [], {}
    for label in sorted(by_class):
        idx = list(by_class[label])
        rng.shuffle(idx)
        chosen += idx[:n]
        counts[label] = min(n, len(idx))
    return sorted(chosen), counts


# Features -------------------------------------------------------------------------------------


class LabFeatures:
    """Pooled features of one lab's cells per variant and view, cached in chunk files."""

    def __init__(
        self,
        clf: Classifier,
        *,
        lab: str,
        cells: Sequence[Cell],
        pool: Sequence[int],
        train_stain: StainStats,
        cache: Path,
        stats_cells: int,
        chunk: int = 64,
    ) -> None:
        self.clf, self.lab, self.cells = clf, lab, list(cells)
        self.shift = shift_of(lab)
        self.train_stain = train_stain
        self.chunk = chunk
        # Unlabelled lab pictures for the stain and BN statistics: from the pool, never test.
        step = max(1, len(pool) // stats_cells)
        self.stats_idx = list(pool)[::step][:stats_cells]
        key = json.dumps([clf.geometry, [str(c.path) for c in cells], lab, self.stats_idx])
        self.root = cache / lab / hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:12]
        self.root.mkdir(parents=True, exist_ok=True)
        self.lab_stain = StainStats.of(self.picture(i, stain=False) for i in self.stats_idx)

    def picture(self, i: int, *, stain: bool) -> Image.Image:
        img = self.cells[i].open()
        if self.shift is not None:
            img = self.shift(img, np.random.default_rng([0, i]))
        if stain:
            img = reinhard(img, source=self.lab_stain, target=self.train_stain)
        return img

    def classifier(self, variant: str) -> Classifier:
        if "bn" not in variant.split("+"):
            return self.clf
        stain = variant.startswith("reinhard")
        images = [self.picture(i, stain=stain) for i in self.stats_idx]
        batches = [self.clf.preprocess(images[s : s + 32]) for s in range(0, len(images), 32)]
        return with_model(self.clf, recalibrate_batchnorm(self.clf.eager, batches))

    def activations(self, variant: str, views: Sequence[str], start: int) -> torch.Tensor:
        """V x N x C x H x W float16: the output of the network's first `start` feature
        blocks (`ml.adapt.prefix`) for every view of every cell."""
        stain = variant.startswith("reinhard")
        clf: Classifier | None = None
        out = []
        for k in range(0, len(self.cells), self.chunk):
            name = f"{variant}-{'-'.join(views)}-at{start}-{k // self.chunk:04d}.pt"
            path = self.root / name
            if not path.exists():
                if clf is None:
                    clf = self.classifier(variant)
                front = prefix(clf.eager, start).eval()
                pictures = [
                    self.picture(i, stain=stain)
                    for i in range(k, min(k + self.chunk, len(self.cells)))
                ]
                squares = [clf.fit_to_input(p.convert("RGB")) for p in pictures]
                with torch.no_grad():
                    x = torch.stack(
                        [front(clf.to_input_batch([view(q, v) for q in squares])) for v in views]
                    )
                torch.save(x.half(), path)
            out.append(torch.load(path, weights_only=True))
        return torch.cat(out, dim=1)


def pooled_features(
    tail: Tail, acts: torch.Tensor, *, taps: Sequence[int] = (), batch: int = 128
) -> torch.Tensor:
    """V x N x D pooled features of the frozen tail (the classifier's input, then `taps`)."""
    with torch.no_grad():
        tail.eval()
        return torch.stack(
            [
                torch.cat(
                    [
                        tail.pooled(v[s : s + batch].float(), taps=taps)
                        for s in range(0, v.shape[0], batch)
                    ]
                )
                for v in acts
            ]
        )


# Heads and thresholds -------------------------------------------------------------------------


def fit_head(
    head: str, x: torch.Tensor, y: torch.Tensor, *, w0: torch.Tensor, b0: torch.Tensor, t: float
) -> FeatureHead:
    num_classes = w0.shape[0]
    if head == "proto":
        return prototype_head(x, y, num_classes=num_classes)
    if head == "logistic":
        return logistic_head(x, y, init_weight=w0, init_bias=b0, max_iter=LOGISTIC_ITER)
    allowed = torch.zeros(num_classes, dtype=torch.bool)
    allowed[sorted(set(y.tolist()))] = True
    return FeatureHead(weight=w0, bias=b0, allowed=allowed, scale=1.0 / t)


# A method is a fitter: reviewed cells (indices into the lab's cells) -> a predictor: cells ->
# N x C probabilities. The same fitter makes the final head and the out-of-fold ones.
Predictor = Callable[[torch.Tensor], torch.Tensor]
Fitter = Callable[[torch.Tensor], Predictor]


def feature_fitter(
    head: str,
    feats: torch.Tensor,
    y_all: torch.Tensor,
    *,
    w0: torch.Tensor,
    b0: torch.Tensor,
    t: float,
) -> Fitter:
    """A head on fixed features (V x N x D, every view a training sample, views averaged to
    predict)."""

    def fit(idx: torch.Tensor) -> Predictor:
        fitted = fit_head(head, *_samples(feats[:, idx], y_all[idx]), w0=w0, b0=b0, t=t)
        return lambda j: fitted.probabilities(feats[:, j].mean(0))

    return fit


def tail_fitter(
    tail: Tail, acts: torch.Tensor, y_all: torch.Tensor, *, seed: int, steps: int
) -> Fitter:
    """`ml.adapt.fine_tune_tail` on the prefix outputs (V x N x C x H x W) of every view."""

    def fit(idx: torch.Tensor) -> Predictor:
        x = acts[:, idx].reshape(-1, *acts.shape[2:])
        tuned = fine_tune_tail(tail, x, y_all[idx].repeat(acts.shape[0]), seed=seed, steps=steps)
        return lambda j: tuned.probabilities(acts[:, j])

    return fit


def out_of_fold(fit: Fitter, reviewed: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each reviewed cell's probabilities from a head fitted without it (OOF_FOLDS folds,
    stratified by class)."""
    fold = torch.zeros(len(reviewed), dtype=torch.long)
    for c in sorted(set(y.tolist())):
        idx = (y == c).nonzero().flatten()
        fold[idx] = torch.arange(len(idx)) % OOF_FOLDS
    probs: torch.Tensor | None = None
    for f in range(OOF_FOLDS):
        held, kept = fold == f, fold != f
        if not held.any():
            continue
        p = fit(reviewed[kept])(reviewed[held])
        if probs is None:
            probs = torch.zeros(len(reviewed), p.shape[1])
        probs[held] = p
    assert probs is not None  # at least one fold holds a cell
    return probs


def _samples(feats: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V x N x D features and N labels -> (V*N) x D samples and their labels."""
    return feats.reshape(-1, feats.shape[-1]), y.repeat(feats.shape[0])


def accepted(probs: torch.Tensor, y: torch.Tensor, threshold: float | None) -> dict[str, Any]:
    conf, pred = probs.max(1)
    ok = pred == y
    sel = conf >= threshold if threshold is not None else torch.zeros_like(ok)
    return {"accepted": int(sel.sum()), "right": int((ok & sel).sum())}


# The study ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.time()
    torch.set_num_threads(args.threads)
    clf = Classifier.load(args.model, device="cpu", accelerate=False)
    classes = list(clf.classes)
    # The trained linear classifier (mobilenet_v2: Dropout then Linear).
    linear = [
        m for m in clf.eager.get_submodule("classifier").modules() if isinstance(m, nn.Linear)
    ][-1]
    w0, b0 = linear.weight.detach().float(), linear.bias.detach().float()
    t = float(clf.temperature)
    ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
    train, val = model_split(
        argparse.Namespace(data=args.pbc, extra_train=None), dict(ckpt.get("recipe", {}))
    )
    train_stain = StainStats.of(c.open() for c in fit_subset(train, args.stats_cells // 8, 0))
    views = list(VIEWS[: args.views])
    report: dict[str, Any] = {
        "command": "python -m ml.adapt_study " + " ".join(sys.argv[1:]),
        "model": str(args.model),
        "model_sha256": sha256_of(args.model),
        "classes": classes,
        "views": views,
        "logistic_iter": LOGISTIC_ITER,
        "tail_from": args.tail_from,
        "taps": args.taps,
        "tail_steps": args.tail_steps,
        "deep_variants": args.deep_variants,
        "deep_labs": args.deep_labs,
        "deep_ns": args.deep_ns,
        "threads": args.threads,
        "oof_folds": OOF_FOLDS,
        "ns": args.ns,
        "seeds": args.seeds,
        "train_stain": train_stain.to_dict(),
        "labs": {},
        "rows": [],
    }
    # Each adapted row's test cells' confidence and rightness, for the cross-lab threshold.
    scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for lab in args.labs:
        t_lab = time.time()
        if lab == "bccd":
            cells = kaggle_cells(Path(args.kaggle), classes)
        else:
            cells = fit_subset(val, args.per_class, args.split_seed)
        test, pool = split_lab(cells, args.split_seed)
        lf = LabFeatures(
            clf,
            lab=lab,
            cells=cells,
            pool=pool,
            train_stain=train_stain,
            cache=Path(args.cache_dir),
            stats_cells=args.stats_cells,
        )
        y_all = torch.tensor([classes.index(c.label) for c in cells])
        count: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # test, pool
        for i in test:
            count[cells[i].label][0] += 1
        for i in pool:
            count[cells[i].label][1] += 1
        report["labs"][lab] = {
            "cells": len(cells),
            "test_per_class": {k: v[0] for k, v in sorted(count.items())},
            "pool_per_class": {k: v[1] for k, v in sorted(count.items())},
            "stain": lf.lab_stain.to_dict(),
            "stats_cells": len(lf.stats_idx),
        }
        test_t = torch.tensor(test)
        y_test = y_all[test_t]
        stats_t = torch.tensor(lf.stats_idx)
        for variant in args.variants:
            t_var = time.time()
            acts = lf.activations(variant, views, args.tail_from)
            tail = Tail(lf.classifier(variant).eager, args.tail_from)
            pooled = pooled_features(tail, acts, taps=args.taps)
            feats_all = pooled[..., : w0.shape[1]]
            # The tapped blocks' pooled outputs z-scored on the lab's unlabelled pool pictures,
            # so the multi-layer head's weights on them (trained from zero) share one scale.
            extra = pooled[..., w0.shape[1] :]
            mu = extra[:, stats_t].mean((0, 1))
            sd = extra[:, stats_t].std((0, 1)).clamp_min(1e-6)
            multi = torch.cat([feats_all, (extra - mu) / sd], dim=-1)
            w0_multi = torch.cat([w0, torch.zeros(w0.shape[0], extra.shape[-1])], dim=1)
            print(f"{lab} {variant}: features in {time.time() - t_var:.0f}s", flush=True)
            t_var = time.time()
            for nv in sorted({1, len(views)}):
                feats = feats_all[:nv]
                x_test = feats[:, test_t].mean(0)
                base_probs = torch.softmax((x_test @ w0.T + b0) / t, dim=1)
                row0 = {"lab": lab, "variant": variant, "views": nv, "head": "base", "n": 0}
                ok = base_probs.argmax(1) == y_test
                report["rows"].append(
                    {
                        **row0,
                        "seed": None,
                        "test_cells": len(test),
                        "test_right": int(ok.sum()),
                        "model_threshold": accepted(base_probs, y_test, clf.threshold),
                    }
                )
                for n in [n for n in args.ns if n > 0]:
                    for seed in args.seeds:
                        reviewed, drawn = draw_reviewed(cells, pool, n, seed)
                        r_t = torch.tensor(reviewed)
                        y_r = y_all[r_t]
                        for head in args.heads:
                            if head == "deep":
                                if (
                                    nv != len(views)  # the deep fine-tune trains on every view
                                    or variant not in args.deep_variants
                                    or lab not in args.deep_labs
                                    or n not in args.deep_ns
                                ):
                                    continue
                                fit = tail_fitter(
                                    tail, acts, y_all, seed=seed, steps=args.tail_steps
                                )
                            elif head == "multilayer":
                                fit = feature_fitter(
                                    "logistic", multi[:nv], y_all, w0=w0_multi, b0=b0, t=t
                                )
                            else:
                                fit = feature_fitter(head, feats, y_all, w0=w0, b0=b0, t=t)
                            t_fit = time.time()
                            probs = fit(r_t)(test_t)
                            fit_seconds = time.time() - t_fit
                            row = {
                                "lab": lab,
                                "variant": variant,
                                "views": nv,
                                "head": head,
                                "n": n,
                                "seed": seed,
                                "drawn": drawn,
                                "test_cells": len(test),
                                "test_right": int((probs.argmax(1) == y_test).sum()),
                                "fit_seconds": round(fit_seconds, 2),
                            }
                            if head in SLOW_HEADS and len(reviewed) < cells_needed(0.99):
                                # The out-of-fold fits cost OOF_FOLDS fine-tunes, and with
                                # fewer reviewed cells than a 99 % bound needs no threshold
                                # can pass whatever they say: the conservative rule gives none.
                                cons = conservative_threshold(
                                    np.zeros(len(reviewed)), np.zeros(len(reviewed), bool)
                                )
                                row["conservative"] = {**cons.to_dict(), "accepted": 0, "right": 0}
                                row["empirical"] = {"threshold": None, "not_fitted": True}
                            else:
                                oof = out_of_fold(fit, r_t, y_r)
                                conf, pred = oof.max(1)
                                right = (pred == y_r).tolist()
                                row["reviewed_oof_right"] = int(sum(right))
                                cons = conservative_threshold(conf.tolist(), right)
                                emp = empirical_threshold(conf.tolist(), right)
                                row["conservative"] = {
                                    **cons.to_dict(),
                                    **accepted(probs, y_test, cons.threshold),
                                }
                                row["empirical"] = {
                                    "threshold": emp,
                                    **accepted(probs, y_test, emp),
                                }
                            test_conf, test_pred = probs.max(1)
                            scores[len(report["rows"])] = (
                                test_conf.numpy(),
                                (test_pred == y_test).numpy(),
                            )
                            report["rows"].append(row)
            print(f"{lab} {variant}: heads in {time.time() - t_var:.0f}s", flush=True)
            _write(report, args.json)  # a variant at a time: a cut-off run keeps its rows
        report["labs"][lab]["seconds"] = round(time.time() - t_lab, 1)
        print(f"{lab}: done in {time.time() - t_lab:.0f}s", flush=True)
        _write(report, args.json)  # a lab at a time: a cut-off run keeps what it measured
    cross_lab_thresholds(report["rows"], scores)
    report["seconds"] = round(time.time() - t_start, 1)
    report["summary"] = summarise(report["rows"])
    _write(report, args.json)
    return report


def cross_lab_thresholds(
    rows: list[dict[str, Any]], scores: dict[int, tuple[np.ndarray, np.ndarray]]
) -> None:
    """A threshold for a method that a lab does not have to earn alone: fitted
    (`conservative_threshold`) on the test cells of every other lab adapted the same way (same
    variant, views, head, n and seed), applied to this lab's. A lab with 10-25 reviewed cells a
    class has too few to bound 99 % by itself; the other labs' cells are many. Valid for a new
    lab only as far as it is like those labs: its own test cells measure that here."""
    by_key: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i in scores:
        r = rows[i]
        by_key[(r["variant"], r["views"], r["head"], r["n"], r["seed"])].append(i)
    for i, (conf, right) in scores.items():
        r = rows[i]
        others = [j for j in by_key[(r["variant"], r["views"], r["head"], r["n"], r["seed"])]]
        others = [j for j in others if rows[j]["lab"] != r["lab"]]
        if not others:
            continue
        fit = conservative_threshold(
            np.concatenate([scores[j][0] for j in others]),
            np.concatenate([scores[j][1] for j in others]),
        )
        sel = conf >= fit.threshold if fit.threshold is not None else np.zeros_like(right)
        r["cross_lab"] = {
            **fit.to_dict(),
            "from_labs": sorted({rows[j]["lab"] for j in others}),
            "accepted": int(sel.sum()),
            "right": int((sel & right).sum()),
        }


def _write(report: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1) + "\n")


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per lab, method and n: test accuracy (mean and range over seeds), and the conservative
    and empirical thresholds' auto-accepted share and its accuracy (pooled over seeds)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["lab"], r["variant"], r["views"], r["head"], r["n"])].append(r)
    out = []
    for (lab, variant, nv, head, n), rs in groups.items():
        accs = [r["test_right"] / r["test_cells"] for r in rs]
        cells = sum(r["test_cells"] for r in rs)
        s: dict[str, Any] = {
            "lab": lab,
            "variant": variant,
            "views": nv,
            "head": head,
            "n": n,
            "runs": len(rs),
            "accuracy": float(np.mean(accs)),
            "accuracy_min": float(min(accs)),
            "accuracy_max": float(max(accs)),
        }
        rules = ["model_threshold"] if n == 0 else ["conservative", "empirical", "cross_lab"]
        for rule in rules:
            if any(rule not in r for r in rs):
                continue
            if any(r[rule].get("not_fitted") for r in rs):
                s[rule] = {"not_fitted": True}
                continue
            acc_n = sum(r[rule]["accepted"] for r in rs)
            s[rule] = {
                "accepted_share": acc_n / cells,
                "accepted_accuracy": (sum(r[rule]["right"] for r in rs) / acc_n if acc_n else None),
                "runs_with_threshold": sum(r[rule]["threshold"] is not None for r in rs)
                if rule != "model_threshold"
                else None,
            }
        if n:
            s["reviewed_cells"] = float(np.mean([sum(r["drawn"].values()) for r in rs]))
        out.append(s)
    return out


# Tables ---------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def tables(
    report: dict[str, Any],
    *,
    select: Sequence[str] = (),
    threshold_ns: Sequence[int] = (),
) -> str:
    """Markdown: per lab, the accuracy curve of every method (or of those in select, each
    VARIANT/VIEWS/HEAD); then the auto-accept thresholds (at threshold_ns, or every n)."""
    summary = report.get("summary") or summarise(report["rows"])
    if select:
        wanted = {tuple(m.split("/")) for m in select}
        summary = [
            s
            for s in summary
            if (s["variant"], str(s["views"]), s["head"]) in wanted
            or (s["n"] == 0 and any(w[:2] == (s["variant"], str(s["views"])) for w in wanted))
        ]
    ns = sorted({s["n"] for s in summary})
    lines = []
    for lab in report["labs"]:
        mine = [s for s in summary if s["lab"] == lab]
        info = report["labs"][lab]
        lines.append(
            f"\n**{lab}** ({info['cells']} cells; test a class: {info['test_per_class']}; "
            f"pool a class: {info['pool_per_class']})\n"
        )
        lines.append("| picture | BN | views | head | " + " | ".join(f"n={n}" for n in ns) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(ns))
        methods = sorted({(s["variant"], s["views"], s["head"]) for s in mine if s["n"] > 0})
        for variant, nv, head in methods:
            cells = []
            for n in ns:
                want = (variant, nv, "base" if n == 0 else head, n)
                hit = [s for s in mine if (s["variant"], s["views"], s["head"], s["n"]) == want]
                if not hit:
                    cells.append("")
                    continue
                s = hit[0]
                spread = (
                    ""
                    if s["runs"] == 1
                    else f" ({_pct(s['accuracy_min'])}-{_pct(s['accuracy_max'])})"
                )
                cells.append(f"{_pct(s['accuracy'])}{spread}")
            picture = "Reinhard" if variant.startswith("reinhard") else "as is"
            bn = "lab's" if variant.endswith("bn") else "trained"
            lines.append(f"| {picture} | {bn} | {nv} | {head} | " + " | ".join(cells) + " |")
    lines.append(
        "\n| lab | method | n | accuracy | conservative: runs with a threshold | auto-accepted"
        " | right among them | empirical: auto-accepted | right among them"
        " | cross-lab: runs with a threshold | auto-accepted | right among them |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        if s["n"] == 0 or (threshold_ns and s["n"] not in threshold_ns):
            continue
        c = s["conservative"]
        e = s["empirical"] if not s["empirical"].get("not_fitted") else {}
        x = s.get("cross_lab", {"runs_with_threshold": "-"})
        method = f"{s['variant']} / {s['views']} view(s) / {s['head']}"
        lines.append(
            f"| {s['lab']} | {method} | {s['n']} | {_pct(s['accuracy'])} | "
            f"{c['runs_with_threshold']}/{s['runs']} | {_pct(c['accepted_share'])} | "
            f"{_pct(c['accepted_accuracy'])} | {_pct(e.get('accepted_share'))} | "
            f"{_pct(e.get('accepted_accuracy'))} | {x['runs_with_threshold']}/{s['runs']} | "
            f"{_pct(x.get('accepted_share'))} | {_pct(x.get('accepted_accuracy'))} |"
        )
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--report", help="print the tables of this result JSON and stop")
    p.add_argument("--select", nargs="*", default=[], help="with --report: VARIANT/VIEWS/HEAD")
    p.add_argument("--threshold-ns", type=int, nargs="*", default=[], help="with --report")
    p.add_argument("--model", default="ml/weights/pbc8-mobilenetv2.pt")
    p.add_argument("--pbc", default="../shared/data/pbc/dev", help="the model's --data folder")
    p.add_argument("--kaggle", default="../shared/data/kaggle-blood-cells/TRAIN")
    p.add_argument("--labs", nargs="+", default=["bccd", "yellow", "stain"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    p.add_argument("--views", type=int, default=4, choices=range(1, len(VIEWS) + 1))
    p.add_argument(
        "--tail-from", type=int, default=14, help="the deep fine-tune trains features[N:] on"
    )
    p.add_argument(
        "--taps", type=int, nargs="*", default=[13, 16], help="blocks the multilayer head adds"
    )
    p.add_argument("--tail-steps", type=int, default=80, help="batches of the deep fine-tune")
    p.add_argument(
        "--deep-variants",
        nargs="*",
        default=list(VARIANTS),
        choices=VARIANTS,
        help="the variants the deep head runs on (minutes a fit on a shared CPU)",
    )
    p.add_argument("--deep-labs", nargs="*", default=["bccd", *SYNTHETIC], help="labs for deep")
    p.add_argument("--deep-ns", type=int, nargs="*", default=[5, 10, 25, 50], help="ns for deep")
    p.add_argument("--ns", type=int, nargs="+", default=[0, 5, 10, 25, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-class", type=int, default=72, help="PBC val cells a class (shifts)")
    p.add_argument("--stats-cells", type=int, default=200, help="pool pictures for BN / stain")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--cache-dir", default="var/adapt-study")
    p.add_argument("--json")
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.report:
        report = json.loads(Path(args.report).read_text())
        print(tables(report, select=args.select, threshold_ns=args.threshold_ns))
        return
    unknown = set(args.labs) - {"bccd", *SYNTHETIC}
    if unknown:
        raise SystemExit(f"unknown labs {sorted(unknown)}: bccd or one of {SYNTHETIC}")
    print(tables(run(args)))


if __name__ == "__main__":
    main()
