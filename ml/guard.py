"""Fit a batch guard (`ml.ood`) to a trained checkpoint on its own features, and measure it.

    python -m ml.guard --model ml/weights/kaggle4-mobilenetv2.pt \
        --data ../shared/data/kaggle-blood-cells/TRAIN --away bccd:bccd:voc:../shared/data/bccd \
        --shift-cells 200 --cache-dir var/guard/cache \
        --json ml/weights/kaggle4-mobilenetv2.guard.json --out ml/weights/kaggle4-mobilenetv2.pt

A guard is fitted after training, so a shipped model gets one without being retrained. This
fits the pooled-feature design; `ml.guard_study --ship` fits the one that also reads early
blocks (pbc8's, docs/MODELS.md "A guard a lab can trust"). Steps:

1. The model's own split is rebuilt from its checkpoint's `recipe` (`ml.train.load_data`: the
   same data folder, grouping, val fraction, seed, naive holdout and extra training folders),
   so the guard is fitted on cells the model trained on and calibrated on cells it did not.
2. The model's pooled features (the classifier's input, `Classifier.embed`, eval transform) of
   at most --fit-per-class training cells a class, of every val cell, of every --away cell and
   of the val cells under each synthetic shift (`SHIFTS`: stain, scale, blur, camera noise) are
   computed once and cached under --cache-dir in chunks (an interrupted run resumes).
3. The guard (`OODGuard.fit`) is fitted on the training features.
4. Measured per fold: the val cells are halved by group (near-copies of a cell on one side);
   thresholds are calibrated on one half and false alarms counted on batches of the other half,
   and each half's thresholds count the flagged batches of every --away source and every shift
   (detections), per batch size; both halves in turn. A batch is drawn within one pool, of
   distinct cells (source-cell groups) while the pool has enough of them.
5. The threshold's uncertainty: the val cells are resampled by group with replacement
   (--bootstrap times) and the thresholds recalibrated; the report gives the 2.5, 50 and 97.5
   percentiles.
6. The shipped guard is calibrated on every val cell (sizes 1, 5, 20, 100; the size-1 threshold
   is the per-cell limit) and written into the checkpoint as `ood` (--out; the weights and
   every other key unchanged).

Everything runs in one process (`--threads`, default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageFilter

from ml.checkpoint import atomic_save, sha256_of
from ml.inference import Classifier, PooledFeatures
from ml.ood import BATCH_SIZES, OODGuard, auroc, grouped_batch_means, grouped_thresholds
from ml.sources import Cell, SourceSpec, limit_cells, list_cells

T = TypeVar("T")

# Synthetic shifts of the val cells: what another lab's slides and camera change.
Shift = Callable[[Image.Image, np.random.Generator], Image.Image]


def _hed_stain(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Another stain batch: haematoxylin stronger, eosin weaker, a warm background (OD space,
    Ruifrok & Johnston's vectors, as `ml.transforms.StainJitter` but fixed and stronger)."""
    from ml.transforms import _HED_FROM_RGB, _RGB_FROM_HED

    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    od = -np.log10(np.clip(a, 1.0, 255.0) / 255.0)
    hed = od.reshape(-1, 3) @ _HED_FROM_RGB
    hed = hed * np.array([1.6, 0.5, 1.0], np.float32) + np.array([0.03, 0.0, 0.02], np.float32)
    out = 255.0 * np.power(10.0, -np.clip(hed @ _RGB_FROM_HED, 0, None).reshape(a.shape))
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def _zoom_out(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A lower magnification: the picture shrunk to half its size (the cell spans half the
    pixels), centred on a frame of its own border colour."""
    rgb = img.convert("RGB")
    w, h = rgb.size
    small = rgb.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BILINEAR)
    border = np.concatenate(
        [np.asarray(rgb)[0], np.asarray(rgb)[-1], np.asarray(rgb)[:, 0], np.asarray(rgb)[:, -1]]
    )
    colour = tuple(int(v) for v in np.median(border, axis=0))
    frame = Image.new("RGB", (w, h), colour)
    frame.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
    return frame


def _blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Out of focus: Gaussian blur, radius 2 px."""
    return img.convert("RGB").filter(ImageFilter.GaussianBlur(2.0))


def _camera_noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A noisier, more compressed camera: Gaussian noise (sigma 12 grey levels), JPEG q=40."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    noisy = np.clip(a + rng.normal(0.0, 12.0, a.shape), 0, 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=40)
    buf.seek(0)
    with Image.open(buf) as jpeg:
        return jpeg.convert("RGB")


SHIFTS: dict[str, Shift] = {
    "stain": _hed_stain,
    "scale": _zoom_out,
    "blur": _blur,
    "noise": _camera_noise,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="the trained checkpoint")
    p.add_argument("--data", required=True, help="its --data folder (its split is rebuilt)")
    p.add_argument(
        "--extra-train",
        action="append",
        help="its --extra-train folders, where the recipe's paths do not exist here",
    )
    p.add_argument("--away", action="append", default=[], help="NAME:LAB:KIND:PATH[:LIMIT]")
    p.add_argument("--shifts", nargs="*", default=sorted(SHIFTS), choices=sorted(SHIFTS))
    p.add_argument(
        "--shift-cells",
        type=int,
        default=0,
        help="shift at most this many val cells, spread over their groups (0: all)",
    )
    p.add_argument("--fit-per-class", type=int, default=500)
    p.add_argument("--k", type=int, default=32, help="principal directions kept by the guard")
    p.add_argument("--quantile", type=float, default=0.99)
    p.add_argument("--sizes", type=int, nargs="+", default=[20, 100], help="batch sizes measured")
    p.add_argument("--draws", type=int, default=2000, help="batches drawn per pool and size")
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--out", help="write the checkpoint with its guard here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256, help="cells per cache file")
    return p


# 1. The model's split -------------------------------------------------------------------------


def model_split(args: argparse.Namespace, recipe: dict[str, Any]) -> tuple[list[Cell], list[Cell]]:
    """(training cells, val cells) of the checkpoint's own split, from its recipe."""
    from ml.train import load_data  # the training code, only to rebuild the split

    ns = argparse.Namespace(
        **{
            "limit": 0,
            "naive_holdout": 0.0,
            "extra_train": [],
            "group_by": "file",
            "stain_jitter": False,
            "shift": 0.0,  # recipes older than ml.train --shift
            **recipe,
            "data": args.data,
        }
    )
    if args.extra_train is not None:
        ns.extra_train = args.extra_train
    data = load_data(ns)
    extra = set(data.extra_idx)

    def cell(i: int) -> Cell:
        path, y = data.samples[i]
        source = "extra" if i in extra else "data"
        group = f"{source}:{data.groups[i] if i < len(data.groups) else i}"
        return Cell(path, data.classes[y], source, group)

    return [cell(i) for i in data.train_idx], [cell(i) for i in data.val_idx]


def fit_subset(cells: Sequence[Cell], per_class: int, seed: int) -> list[Cell]:
    """At most per_class cells of each class, spread over its groups (one copy of a group
    before a second one)."""
    rng = np.random.default_rng(seed)
    out: list[Cell] = []
    for label in sorted({c.label for c in cells}):
        mine = [c for c in cells if c.label == label]
        order = rng.permutation(len(mine))
        seen: dict[str, int] = {}
        rank: list[tuple[int, int, int]] = []
        for i in order:
            g = mine[i].group
            rank.append((seen.get(g, 0), len(rank), i))
            seen[g] = seen.get(g, 0) + 1
        out += [mine[i] for _, _, i in sorted(rank)[:per_class]]
    return out


# 2. Features ----------------------------------------------------------------------------------


def cached_features(
    clf: Classifier,
    cells: Sequence[Cell],
    *,
    identity: Sequence[object],
    extract: Callable[[torch.Tensor], T],
    join: Callable[[list[T]], T],
    shift: str | None,
    cache: Path,
    chunk: int,
    seed: int,
) -> T:
    """extract() of the cells' preprocessed batches of 32 (optionally under a synthetic shift),
    joined, and cached in chunk files under cache/ keyed by `identity` (what the features depend
    on besides the cells: the model's geometry, its weights), the cells, the shift and the seed.
    This command and ml.guard_study share it; each extracts its own features."""
    key = json.dumps(
        [*identity, [str(c.path) for c in cells], [c.box for c in cells], shift, seed]
    ).encode()
    root = cache / hashlib.sha1(key, usedforsecurity=False).hexdigest()[:16]
    root.mkdir(parents=True, exist_ok=True)
    parts: list[T] = []
    for k in range(0, len(cells), chunk):
        path = root / f"chunk-{k // chunk:04d}.pt"
        if not path.exists():
            images = []
            for i, c in enumerate(cells[k : k + chunk]):
                img = c.open()
                if shift is not None:
                    img = SHIFTS[shift](img, np.random.default_rng([seed, k + i]))
                images.append(img)
            found = [extract(clf.preprocess(images[s : s + 32])) for s in range(0, len(images), 32)]
            torch.save(join(found), path)
        parts.append(torch.load(path, weights_only=True))
    return join(parts)


def features(
    clf: Classifier,
    cells: Sequence[Cell],
    *,
    shift: str | None,
    cache: Path,
    chunk: int,
    seed: int,
) -> torch.Tensor:
    """Pooled features (N x D, float32) of the cells as the model sees them, optionally under a
    synthetic shift, cached in chunk files under cache/ keyed by the model and the cells."""
    # The pooled features alone (this command fits the pooled-feature design), whatever guard
    # the checkpoint carries now (Classifier.embed follows that guard's taps).
    pooled = PooledFeatures(clf.eager.get_submodule("features")).eval()

    def extract(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = pooled(batch)
        return out

    return cached_features(
        clf,
        cells,
        identity=[clf.geometry],
        extract=extract,
        join=lambda found: torch.cat(found) if found else torch.zeros(0, 0),
        shift=shift,
        cache=cache,
        chunk=chunk,
        seed=seed,
    )


# 4-5. Batches, thresholds, bootstrap ----------------------------------------------------------


def group_ids(cells: Sequence[Cell]) -> np.ndarray:
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(c.group, len(ids)) for c in cells])


def halves(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two index sets of the cells, whole groups on one side, about half the groups each."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    first = set(rng.permutation(uniq)[: len(uniq) // 2].tolist())
    mask = np.array([g in first for g in groups])
    return np.nonzero(mask)[0], np.nonzero(~mask)[0]


def measure(
    val: tuple[np.ndarray, np.ndarray],
    away: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    sizes: Sequence[int],
    quantile: float,
    draws: int,
    seed: int,
) -> dict[str, Any]:
    """False alarms and detections per fold (calibrate on one half of the val cells, measure on
    the other half and on every away pool) and batch size, and their mean over the folds."""
    scores, groups = val
    folds = []
    for k, (cal, test) in enumerate([halves(groups, seed), halves(groups, seed)[::-1]]):
        rng = np.random.default_rng([seed, k])
        limits = grouped_thresholds(
            scores[cal], groups[cal], sizes, quantile=quantile, draws=draws, rng=rng
        )
        fold: dict[str, Any] = {"calibrated_on": len(cal), "tested_on": len(test)}
        for n in sizes:
            inside = grouped_batch_means(scores[test], groups[test], n, draws, rng)
            entry: dict[str, Any] = {
                "threshold": limits[n],
                "false_alarm": float((inside > limits[n]).mean()),
            }
            for name, (s, g) in away.items():
                outside = grouped_batch_means(s, g, n, draws, rng)
                entry[name] = {
                    "detected": float((outside > limits[n]).mean()),
                    "auroc": auroc(inside, outside),
                }
            fold[f"batch_{n}"] = entry
        folds.append(fold)
    mean: dict[str, Any] = {}
    for n in sizes:
        key = f"batch_{n}"
        mean[key] = {"false_alarm": float(np.mean([f[key]["false_alarm"] for f in folds]))}
        for name in away:
            mean[key][name] = float(np.mean([f[key][name]["detected"] for f in folds]))
    return {"folds": folds, "mean": mean}


def bootstrap(
    scores: np.ndarray,
    groups: np.ndarray,
    sizes: Sequence[int],
    *,
    quantile: float,
    draws: int,
    times: int,
    seed: int,
) -> dict[str, Any]:
    """The thresholds recalibrated on val cells resampled by group with replacement."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    by_group = {int(g): np.nonzero(groups == g)[0] for g in uniq}
    found: dict[int, list[float]] = {int(n): [] for n in sizes}
    for _ in range(times):
        picked = rng.choice(uniq, size=len(uniq), replace=True)
        idx = np.concatenate([by_group[int(g)] for g in picked])
        # Each resampled group is a new group, even when drawn twice.
        new_groups = np.concatenate(
            [np.full(len(by_group[int(g)]), j) for j, g in enumerate(picked)]
        )
        t = grouped_thresholds(
            scores[idx], new_groups, sizes, quantile=quantile, draws=draws // 4, rng=rng
        )
        for n in sizes:
            found[int(n)].append(t[int(n)])
    return {
        f"batch_{n}": {
            "p2.5": float(np.percentile(v, 2.5)),
            "median": float(np.median(v)),
            "p97.5": float(np.percentile(v, 97.5)),
            "times": times,
        }
        for n, v in found.items()
    }


def pool_accuracy(clf: Classifier, x: torch.Tensor, cells: Sequence[Cell]) -> dict[str, Any]:
    """The model's answers from the pooled features (its classifier head and temperature) on
    the cells of a pool whose label is one of its classes."""
    known = [i for i, c in enumerate(cells) if c.label in clf.classes]
    if not known:
        return {"n": 0}
    with torch.inference_mode():
        logits = clf.eager.get_submodule("classifier")(x[known]) / clf.temperature
    probs = torch.softmax(logits, dim=1)
    confidence, pred = probs.max(1)
    truth = torch.tensor([clf.classes.index(cells[i].label) for i in known])
    right = pred == truth
    accepted = confidence >= clf.threshold if clf.threshold is not None else torch.ones_like(right)
    return {
        "n": len(known),
        "accuracy": float(right.float().mean()),
        "auto_accepted": float(accepted.float().mean()),
        "accuracy_auto_accepted": float(right[accepted].float().mean()) if accepted.any() else None,
    }


# 6. Main --------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    torch.set_num_threads(args.threads)
    ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
    clf = Classifier.load(args.model, device="cpu", accelerate=False)
    train, val = model_split(args, dict(ckpt.get("recipe", {})))
    fit_cells = fit_subset(train, args.fit_per_class, args.seed)
    cache = Path(args.cache_dir)

    def feats(cells: Sequence[Cell], shift: str | None = None) -> torch.Tensor:
        t = time.time()
        out = features(clf, cells, shift=shift, cache=cache, chunk=args.chunk, seed=args.seed)
        print(f"features of {len(cells)} cells (shift {shift}) in {time.time() - t:.0f}s")
        return out

    fit_x = feats(fit_cells)
    guard = OODGuard.fit(
        fit_x, torch.tensor([clf.classes.index(c.label) for c in fit_cells]), k=args.k
    )
    val_x = feats(val)
    val_scores, val_groups = guard.cell_scores(val_x).numpy(), group_ids(val)
    away: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    away_n: dict[str, int] = {}
    accuracy = {"val": pool_accuracy(clf, val_x, val)}
    for text in args.away:
        spec = SourceSpec.parse(text)
        cells = limit_cells(list_cells(spec), spec, seed=args.seed)
        x = feats(cells)
        away[f"{spec.name} ({spec.lab} lab)"] = (guard.cell_scores(x).numpy(), group_ids(cells))
        away_n[f"{spec.name} ({spec.lab} lab)"] = len(cells)
        accuracy[f"{spec.name} ({spec.lab} lab)"] = pool_accuracy(clf, x, cells)
    shifted = val
    if args.shift_cells and args.shift_cells < len(val):
        per_class = -(-args.shift_cells // len(clf.classes))
        shifted = fit_subset(val, per_class, args.seed)
    for shift in args.shifts:
        x = feats(shifted, shift)
        away[f"shift: {shift}"] = (guard.cell_scores(x).numpy(), group_ids(shifted))
        away_n[f"shift: {shift}"] = len(shifted)
        accuracy[f"shift: {shift}"] = pool_accuracy(clf, x, shifted)
    sizes = sorted(set(args.sizes))
    report: dict[str, Any] = {
        "model": str(args.model),
        "model_sha256_before": sha256_of(args.model),
        "classes": clf.classes,
        "fitted_on": {"cells": len(fit_cells), "per_class_at_most": args.fit_per_class},
        "val": {"cells": len(val), "groups": len(np.unique(val_groups))},
        "away": away_n,
        "k": args.k,
        "quantile": args.quantile,
        # What the guard protects against: the model's accuracy on each pool, and the share
        # and accuracy of the cells its per-cell threshold alone would auto-accept.
        "model_on_pools": accuracy,
        "cell_score": {
            "val_median": float(np.median(val_scores)),
            "val_p99": float(np.quantile(val_scores, 0.99)),
            **{f"{name}_median": float(np.median(s)) for name, (s, _) in away.items()},
        },
    }
    report["measured"] = measure(
        (val_scores, val_groups),
        away,
        sizes=sizes,
        quantile=args.quantile,
        draws=args.draws,
        seed=args.seed,
    )
    report["bootstrap"] = bootstrap(
        val_scores,
        val_groups,
        sizes,
        quantile=args.quantile,
        draws=args.draws,
        times=args.bootstrap,
        seed=args.seed,
    )
    shipped = sorted({*BATCH_SIZES, *sizes})
    guard.thresholds = grouped_thresholds(
        val_scores,
        val_groups,
        shipped,
        quantile=args.quantile,
        draws=args.draws,
        rng=np.random.default_rng(args.seed),
    )
    report["shipped_thresholds"] = guard.thresholds
    if args.out:
        ckpt["ood"] = guard.to_dict()
        ckpt["metrics"] = {**ckpt.get("metrics", {}), "guard": guard_summary(report)}
        atomic_save(ckpt, args.out)
        report["out"] = str(args.out)
        report["out_sha256"] = sha256_of(args.out)
    report["seconds"] = round(time.time() - t0, 1)
    report["command"] = "python -m ml.guard " + " ".join(command_args(args))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["measured"]["mean"], indent=2))
    print(f"thresholds {guard.thresholds} in {report['seconds']}s")
    return report


def guard_summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the checkpoint's metrics say about its guard (the full report is the JSON)."""
    return {
        "fitted_on_cells": report["fitted_on"]["cells"],
        "calibrated_on_cells": report["val"]["cells"],
        "thresholds": report["shipped_thresholds"],
        "measured": report["measured"]["mean"],
    }


def command_args(args: argparse.Namespace) -> list[str]:
    parts = [f"--model {args.model}", f"--data {args.data}"]
    parts += [f"--extra-train {e}" for e in args.extra_train or []]
    parts += [f"--away {a}" for a in args.away]
    parts += [
        f"--shifts {' '.join(args.shifts)}",
        f"--shift-cells {args.shift_cells}",
        f"--fit-per-class {args.fit_per_class}",
        f"--k {args.k}",
        f"--quantile {args.quantile}",
        f"--sizes {' '.join(map(str, args.sizes))}",
        f"--draws {args.draws}",
        f"--bootstrap {args.bootstrap}",
        f"--seed {args.seed}",
    ]
    return parts


if __name__ == "__main__":
    main(get_args_parser().parse_args())
