"""Leave-one-lab-out evaluation of a multi-source model, and the model trained on every lab.

    python -m ml.crosscheck \
        --source pbc:pbc:folder:../shared/data/pbc/dev \
        --source kaggle:bccd:copies:../shared/data/kaggle-blood-cells/TRAIN:1400 \
        --source bccd:bccd:voc:../shared/data/bccd \
        --weights ../shared/weights/mobilenet_v2_imagenet1k.pth --input-size 192 \
        --trunk-blocks 10 --views 1 --epochs 12 --head-epochs 2 --patience 3 --lr-patience 1 \
        --adapt-epochs 6 --adapt-seeds 2 --threads 2 --seed 0 --print-freq 50 \
        --cache-dir var/crosscheck --json var/crosscheck/full.json \
        --out var/crosscheck/wbc-mobilenetv2.pt

is the shipped multi-source model's command (ml/weights/README.md, its model card; about an
hour on 2 idle CPU cores); copy the two outputs to ml/weights/wbc-mobilenetv2.pt and
ml/weights/wbc-mobilenetv2.crosscheck.json.

Sources are `NAME:LAB:KIND:PATH[:LIMIT]` (`ml.sources`). Steps:

1. Every source's cells are listed (Kaggle-style copies grouped by source cell) and split into
   train/val per source, stratified by class, whole groups on one side.
2. The frozen ImageNet trunk (features[:K]) runs once over every cell: the eval view and
   --views augmented views (stain/colour jitter, `ml.transforms.StainJitter`, and the cell-scale
   crop). Activations are cached on disk in chunks under --cache-dir, so an interrupted run
   resumes where it stopped and the folds below share one cache.
3. For each lab L, and once for all labs ("all"): the tail (features[K:] + head) is trained on
   the training cells of the other labs, with the loss masked to each source's own classes
   (`ml.sources.masked_cross_entropy`), early-stopped on their val cells, and a temperature is
   fitted on them: `ml.fit.fit`, the one fit loop, which ml.train runs too (`Fold.fit` hands
   it the cached views and this command's options). The model then classifies every cell of
   L, over the classes it was taught (cells of classes no training source labels are counted
   apart): accuracy, macro-F1, and coverage / accuracy of auto-accepted cells.
4. The per-cell threshold: for each left-out lab, the lowest confidence at which its accepted
   cells are >= --target-accuracy right; the threshold that holds on every left-out lab is the
   highest of these. Coverage per lab at it is reported. A lab on which no threshold reaches
   the target is listed (`threshold_unattainable_on`): only the batch guard can keep its
   cells from being auto-accepted.
5. The batch guard (`ml.ood`) of each fold is fitted on its training features, its flag
   thresholds calibrated on half of its val cells (batches drawn within one lab), and measured
   on the other half (false alarms) against batches of the left-out lab (AUROC, flag rate),
   for batches of 20 and 100 cells.
6. With --out: the "all" model is written as a checkpoint with the cross-lab threshold and its
   batch guard (key `ood`). It is the first fold trained, and a provisional checkpoint (its
   own val threshold) is written as soon as it is done.
7. Adaptation: the fold that never saw lab --adapt-lab is fine-tuned on n of that lab's
   training cells per class (--adapt-n, --adapt-seeds) and scored on its val cells; the
   report is written before this step and again after it.

Figures are computed on the cached activations of the eval view, which is what the full model
computes on the same images up to the float16 rounding of the cache.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ml.checkpoint import save_checkpoint
from ml.data import grouped_stratified_split
from ml.fit import Cells, Recipe, fit_temperature_over, progress, seed_everything, start_fit
from ml.fit import fit as run_fit
from ml.metrics import choose_threshold, summarize
from ml.model import ARCHS, FeaturesTail, build_model, default_weights, split_trunk_tail
from ml.ood import OODGuard, auroc, batch_means
from ml.sources import (
    Cell,
    CellDataset,
    SourceSpec,
    limit_cells,
    list_cells,
)
from ml.transforms import RESIZE_MODES, eval_transform, train_transform


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", action="append", required=True, help="NAME:LAB:KIND:PATH[:LIMIT]")
    p.add_argument("--cache-dir", required=True, help="activation cache (resumable)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--out", help="also write the all-labs model here (checkpoint)")
    p.add_argument("--arch", default="mobilenet_v2", choices=["mobilenet_v2", "efficientnet_lite0"])
    p.add_argument("--weights", default=default_weights())
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--resize", choices=list(RESIZE_MODES), default="cell")
    p.add_argument("--trunk-blocks", type=int, default=17)
    p.add_argument("--views", type=int, default=1, help="augmented views cached per cell")
    p.add_argument("--no-stain-jitter", action="store_true")
    p.add_argument(
        "--head-only",
        action="store_true",
        help="train only the classifier, on pooled features of the frozen ImageNet network "
        "(a linear probe: the recipe for a CPU shared with others)",
    )
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--head-epochs", type=int, default=2)
    p.add_argument("--patience", type=int, default=3, help="early stopping patience (epochs)")
    p.add_argument(
        "--lr-patience",
        type=int,
        default=1,
        help="epochs without a lower val loss before the learning rate is cut (x0.2)",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--target-accuracy", type=float, default=0.99)
    p.add_argument(
        "--guard-batches", type=int, nargs="+", default=[20, 100], help="batch sizes measured"
    )
    p.add_argument("--adapt-lab", default="pbc")
    p.add_argument("--adapt-n", type=int, nargs="*", default=[0, 10, 25, 50, 100])
    p.add_argument("--adapt-seeds", type=int, default=3)
    p.add_argument("--adapt-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=256, help="cells per cache file")
    p.add_argument("--print-freq", type=int, default=20)
    p.add_argument("--stage", choices=["cache", "all"], default="all", help="cache: stop after 2")
    p.add_argument(
        "--folds",
        nargs="+",
        help="run only these folds ('all' and left-out lab names; default: all, then every lab)",
    )
    p.add_argument(
        "--val-folder",
        help="link every single-image val cell here as SOURCE/CLASS/FILE (for ml.evaluate), "
        "then go on; boxed cells (voc) are left out",
    )
    return p


# 1. Cells and split ---------------------------------------------------------------------------


def load_cells(args: argparse.Namespace, specs: Sequence[SourceSpec]) -> list[Cell]:
    """Every source's cells, LIMIT applied. Each source's full list is kept in
    --cache-dir/source-*.json (grouping copies is slow), so a new LIMIT or input size does not
    list it again."""
    cells: list[Cell] = []
    for spec in specs:
        t0 = time.time()
        key = json.dumps([spec.name, spec.kind, str(spec.path)]).encode()
        path = (
            Path(args.cache_dir)
            / f"source-{hashlib.sha1(key, usedforsecurity=False).hexdigest()[:12]}.json"
        )
        if path.exists():
            full = [
                Cell(
                    Path(r["path"]),
                    r["label"],
                    r["source"],
                    r["group"],
                    None if r["box"] is None else tuple(r["box"]),
                )
                for r in json.loads(path.read_text())
            ]
        else:
            full = list_cells(spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps([{**asdict(c), "path": str(c.path)} for c in full]))
        found = limit_cells(full, spec, seed=args.seed)
        print(
            f"source {spec.name} ({spec.lab}, {spec.kind}): {len(found)} of {len(full)} cells, "
            f"{len({c.group for c in found})} groups, {dict(Counter(c.label for c in found))} "
            f"in {time.time() - t0:.0f}s",
            flush=True,
        )
        cells += found
    return cells


def split_cells(
    cells: Sequence[Cell], classes: Sequence[str], fraction: float, seed: int
) -> np.ndarray:
    """Bool per cell: True on the val side. Per source, stratified, whole groups."""
    is_val = np.zeros(len(cells), dtype=bool)
    for source in sorted({c.source for c in cells}):
        idx = [i for i, c in enumerate(cells) if c.source == source]
        gid = {g: k for k, g in enumerate(dict.fromkeys(cells[i].group for i in idx))}
        _, val = grouped_stratified_split(
            [classes.index(cells[i].label) for i in idx],
            [gid[cells[i].group] for i in idx],
            fraction,
            seed,
        )
        is_val[[idx[v] for v in val]] = True
    return is_val


# 2. Cache ---------------------------------------------------------------------------------------


def cache_root(args: argparse.Namespace) -> Path:
    key = {
        "sources": sorted(args.source),
        "arch": args.arch,
        "weights": str(args.weights),
        "input_size": args.input_size,
        "resize": args.resize,
        "trunk_blocks": args.trunk_blocks,
        "views": args.views,
        "stain": not args.no_stain_jitter,
        "seed": args.seed,
        "chunk": args.chunk,
    }
    raw = json.dumps(key, sort_keys=True).encode()
    digest = hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:12]
    return Path(args.cache_dir) / digest


@torch.inference_mode()
def build_cache(
    args: argparse.Namespace,
    cells: Sequence[Cell],
    classes: Sequence[str],
    trunk: nn.Module,
    root: Path,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(eval-view activations N x ..., augmented views V x N x ...), float16, from chunk files
    under root (computed for the chunks not there yet)."""
    trunk.eval()
    root.mkdir(parents=True, exist_ok=True)
    mean, std = ARCHS[args.arch].mean, ARCHS[args.arch].std
    ev = eval_transform(args.input_size, mean, std, args.resize)
    aug = train_transform(
        args.input_size, mean, std, resize=args.resize, stain=not args.no_stain_jitter
    )
    n_chunks = (len(cells) + args.chunk - 1) // args.chunk
    evals, augs = [], []
    with progress(len(cells), "cache", print_freq=args.chunk) as bar:
        for k in range(n_chunks):
            part = cells[k * args.chunk : (k + 1) * args.chunk]
            path = root / f"chunk-{k:04d}.pt"
            if not path.exists():
                views = []
                for v in range(args.views + 1):
                    # Seeded per chunk and view: a resumed run draws the same augmentations.
                    random.seed(args.seed * 1_000_003 + k * 101 + v)
                    torch.manual_seed(args.seed * 1_000_003 + k * 101 + v)
                    ds = CellDataset(part, classes, ev if v == 0 else aug)
                    acts = [
                        trunk(x).to(torch.float16)
                        for x, _ in DataLoader(ds, batch_size=args.batch_size)
                    ]
                    views.append(torch.cat(acts))
                torch.save({"eval": views[0], "aug": torch.stack(views[1:])}, path)
            chunk = torch.load(path, weights_only=True)
            evals.append(chunk["eval"])
            augs.append(chunk["aug"])
            bar.update(len(part))
    return torch.cat(evals), torch.cat(augs, dim=1)


# 3. Folds ---------------------------------------------------------------------------------------


class HeadOnly(nn.Module):
    """The classifier alone, on pooled features (--head-only): a tail with no blocks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential()
        self.classifier = model.get_submodule("classifier")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(x)
        return out


@torch.inference_mode()
def pool(model: nn.Module, k: int, acts: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Pooled features of cached trunk activations through the (frozen) blocks features[k:]."""
    tail = FeaturesTail(model, k).eval()
    flat = acts.reshape(-1, *acts.shape[-3:])
    out = torch.cat([tail.embed(flat[s : s + batch].float()) for s in range(0, len(flat), batch)])
    return out.reshape(*acts.shape[:-3], out.shape[-1]).to(torch.float16)


def fit_recipe(args: argparse.Namespace, *, epochs: int, head_epochs: int) -> Recipe:
    """The one fit loop's recipe (ml.fit) from ml.crosscheck's options."""
    return Recipe(
        epochs=epochs,
        head_epochs=head_epochs,
        patience=args.patience,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        lr_patience=args.lr_patience,
        batch_size=args.batch_size,
        seed=args.seed,
        # One stream of draws per fit, seeded once: how the shipped wbc-mobilenetv2.pt was
        # trained (ml.train re-seeds every epoch, for --resume; the crosscheck does not resume
        # a fit, its cache is what is resumable).
        reseed_each_epoch=False,
        eval_batch_size=256,
        print_freq=args.print_freq,
    )


class Fold:
    """The cached data of one fold and the tail trained on it."""

    def __init__(
        self,
        args: argparse.Namespace,
        name: str,
        model: nn.Module,
        initial: dict[str, torch.Tensor],
        masks: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        self.args, self.name = args, name
        self.model = model
        self.initial = initial
        self.tail: FeaturesTail | HeadOnly = (
            HeadOnly(model) if args.head_only else FeaturesTail(model, args.trunk_blocks)
        )
        self.masks = masks  # N x C: the classes each cell's source labels
        self.labels = labels
        self.history: list[dict[str, Any]] = []
        self.temperature = 1.0
        self.known = torch.ones(masks.shape[1], dtype=torch.bool)

    def fit(
        self,
        eval_acts: torch.Tensor,
        aug_acts: torch.Tensor,
        train: np.ndarray,
        val: np.ndarray,
        *,
        epochs: int,
        head_epochs: int,
        start: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Train the tail on the train cells (one of eval + augmented views per epoch), keep
        the best epoch on the val cells (accuracy, then loss), fit the temperature."""
        args = self.args
        self.model.load_state_dict(start if start is not None else self.initial)
        self.known = self.masks[torch.as_tensor(train)].any(0)
        # View 0 is the eval view, 1.. the augmented ones; the loss is masked to each cell's
        # source's classes, the val scores to the classes this fold is taught.
        views = [eval_acts, *aug_acts.unbind(0)]
        recipe = fit_recipe(args, epochs=epochs, head_epochs=head_epochs)
        state = run_fit(
            self.model,
            self.tail,
            recipe,
            start_fit(self.tail, recipe),
            train=Cells(views, self.labels, self.masks),
            train_idx=torch.as_tensor(train),
            val=Cells(views, self.labels),
            val_idx=torch.as_tensor(val),
            device=torch.device("cpu"),
            known=self.known,
            name=self.name,
        )
        # One history per fold, the adaptation curve's fine-tunes appended to it.
        self.history.extend(state.history)
        if state.best_state is not None:
            self.model.load_state_dict(state.best_state)
            logits, _ = self.logits(eval_acts, val)
            # Over the taught classes only (the others' logits are -inf).
            self.temperature = fit_temperature_over(
                logits, self.labels[torch.as_tensor(val)], self.known
            )

    @torch.inference_mode()
    def logits(
        self, acts: torch.Tensor, idx: np.ndarray | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits with the classes this fold was never taught at -inf, pooled features)."""
        self.tail.eval()
        out, feats = [], []
        idx_t = torch.as_tensor(idx)
        for s in range(0, len(idx_t), 256):
            f = self.tail.embed(acts[idx_t[s : s + 256]].float())
            feats.append(f)
            out.append(self.tail.classifier(f))
        logits = torch.cat(out) if out else torch.zeros(0, len(self.known))
        logits = logits.masked_fill(~self.known, float("-inf"))
        return logits, torch.cat(feats) if feats else torch.zeros(0)

    def probs(self, acts: torch.Tensor, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.logits(acts, idx)
        return torch.softmax(logits / self.temperature, 1), feats


def score(
    probs: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    known: torch.Tensor,
    thresholds: dict[str, float | None],
) -> dict[str, Any]:
    """Accuracy, macro-F1 and, per named threshold, coverage and accuracy of accepted cells, on
    the cells whose class the model was taught (the others are counted as `untaught`)."""
    keep = known[labels]
    names = [c for c, k in zip(classes, known.tolist(), strict=True) if k]
    cols = torch.nonzero(known).flatten()
    remap = {int(c): i for i, c in enumerate(cols.tolist())}
    p = probs[keep][:, cols].numpy()
    y = np.array([remap[int(t)] for t in labels[keep]], dtype=np.int64)
    base = summarize(p, y, names, None)
    present = [c for c in names if base["per_class"][c]["support"] > 0]
    out: dict[str, Any] = {
        "n": int(keep.sum()),
        "untaught": {classes[c]: int(n) for c, n in Counter(labels[~keep].tolist()).items()},
        "accuracy": base["accuracy"],
        # macro-F1 over the classes present in this set (a class with no cells here has no F1)
        "macro_f1": float(np.mean([base["per_class"][c]["f1"] for c in present]))
        if present
        else 0.0,
        "per_class_recall": {c: base["per_class"][c]["recall"] for c in present},
    }
    conf, correct = (
        p.max(1) if len(p) else np.zeros(0),
        (p.argmax(1) == y) if len(p) else np.zeros(0, bool),
    )
    for name, t in thresholds.items():
        acc = conf >= t if t is not None else np.zeros(len(conf), dtype=bool)
        out[f"coverage@{name}"] = float(acc.mean()) if len(acc) else 0.0
        out[f"accuracy_above@{name}"] = float(correct[acc].mean()) if acc.any() else None
    out["_conf"], out["_correct"] = conf, correct
    return out


def by_source(
    cells: Sequence[Cell],
    idx: np.ndarray,
    probs: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    known: torch.Tensor,
    thresholds: dict[str, float | None],
) -> dict[str, dict[str, Any]]:
    """`score` for the cells of each source among idx (probs: rows of idx, in order)."""
    sources = np.array([cells[i].source for i in idx])
    out = {}
    for source in sorted(set(sources.tolist())):
        sel = torch.as_tensor(np.nonzero(sources == source)[0])
        result = score(probs[sel], labels[torch.as_tensor(idx)][sel], classes, known, thresholds)
        out[source] = {k: v for k, v in result.items() if not k.startswith("_")}
    return out


def guard_report(
    guard: OODGuard,
    in_halves: Sequence[tuple[torch.Tensor, torch.Tensor]],
    outside: torch.Tensor | None,
    seed: int,
    sizes: Sequence[int] = (20, 100),
) -> dict[str, Any]:
    """Calibrate on the first half of each in-distribution lab's val features, measure false
    alarms on the second halves and, for the left-out lab, AUROC and flag rate."""
    guard.calibrate([a for a, _ in in_halves], sizes=sorted({1, 5, *sizes}), seed=seed)
    rng = np.random.default_rng(seed + 1)
    out: dict[str, Any] = {"thresholds": dict(guard.thresholds)}
    for n in sizes:
        t = guard.threshold_for(n)
        inside = np.concatenate(
            [
                batch_means(guard.cell_scores(b).numpy(), n, 500, rng)
                for _, b in in_halves
                if len(b) >= n
            ]
            or [np.zeros(0)]
        )
        entry: dict[str, Any] = {
            "in_batches": len(inside),
            "false_alarm": float((inside > t).mean()) if len(inside) and t is not None else None,
        }
        if outside is not None and len(outside) >= n and len(inside):
            away = batch_means(guard.cell_scores(outside).numpy(), n, 500, rng)
            entry |= {
                "auroc": auroc(inside, away),
                "flagged": float((away > t).mean()) if t is not None else None,
            }
        out[f"batch_{n}"] = entry
    return out


def run(
    args: argparse.Namespace,
    specs: Sequence[SourceSpec],
    cells: Sequence[Cell],
    classes: list[str],
    model: nn.Module,
    eval_acts: torch.Tensor,
    aug_acts: torch.Tensor,
    t_start: float,
) -> dict[str, Any]:
    lab_of = {s.name: s.lab for s in specs}
    labs = sorted(set(lab_of.values()))
    cell_lab = np.array([lab_of[c.source] for c in cells])
    is_val = split_cells(cells, classes, args.val_fraction, args.seed)
    labels = torch.tensor([classes.index(c.label) for c in cells])
    source_classes = {s: {c.label for c in cells if c.source == s} for s in lab_of}
    masks = torch.tensor([[k in source_classes[c.source] for k in classes] for c in cells])
    initial = copy.deepcopy(model.state_dict())
    if args.head_only:
        # The blocks stay as ImageNet made them: run them once, train heads on pooled features.
        t0 = time.time()
        eval_acts = pool(model, args.trunk_blocks, eval_acts)
        aug_acts = pool(model, args.trunk_blocks, aug_acts)
        print(f"pooled features {tuple(eval_acts.shape)} in {time.time() - t0:.0f}s", flush=True)
    report: dict[str, Any] = {
        "classes": classes,
        "sources": {
            s.name: {
                "lab": s.lab,
                "kind": s.kind,
                "cells": sum(c.source == s.name for c in cells),
                "val": int(
                    sum(v for c, v in zip(cells, is_val, strict=True) if c.source == s.name)
                ),
                "classes": sorted(source_classes[s.name]),
            }
            for s in specs
        },
        "recipe": {k: v for k, v in vars(args).items()},
        "folds": {},
    }
    folds: dict[str, Fold] = {}
    fold_thresholds: dict[str, float | None] = {}
    kept: dict[str, dict[str, Any]] = {}
    # The all-labs fold first: its provisional checkpoint exists early in a long run.
    for left in args.folds or ["all", *labs]:
        inside = cell_lab != left
        train, val = np.nonzero(inside & ~is_val)[0], np.nonzero(inside & is_val)[0]
        # Each fold its own copy: the adaptation curve starts from the fold that never saw
        # the lab, and the written model is the all-labs fold, whatever ran in between.
        fold = Fold(args, left, copy.deepcopy(model), initial, masks, labels)
        fold.fit(eval_acts, aug_acts, train, val, epochs=args.epochs, head_epochs=args.head_epochs)
        folds[left] = fold
        val_probs, val_feats = fold.probs(eval_acts, val)
        conf = val_probs.max(1).values.numpy()
        ok = (val_probs.argmax(1) == labels[val]).numpy()
        val_threshold = choose_threshold(conf, ok, args.target_accuracy)
        entry: dict[str, Any] = {
            "trained_on": sorted(set(cell_lab[inside])),
            "n_train": len(train),
            "n_val": len(val),
            "temperature": fold.temperature,
            "val_threshold": val_threshold,
            "val": {
                k: v
                for k, v in score(
                    val_probs, labels[val], classes, fold.known, {"val": val_threshold}
                ).items()
                if not k.startswith("_")
            },
            "history": fold.history,
        }
        # The same, source by source (e.g. PBC alone, to compare with a PBC-only model).
        entry["val_by_source"] = by_source(
            cells, val, val_probs, labels, classes, fold.known, {"val": val_threshold}
        )
        train_feats = fold.logits(eval_acts, train)[1]
        guard = OODGuard.fit(train_feats, labels[train])
        halves = []
        for lab in sorted(set(cell_lab[val])):
            sel = np.nonzero(cell_lab[val] == lab)[0]
            rng = np.random.default_rng(args.seed)
            rng.shuffle(sel)
            half = len(sel) // 2
            halves.append((val_feats[sel[:half]], val_feats[sel[half:]]))
        if left != "all":
            test = np.nonzero(~inside)[0]
            probs, feats = fold.probs(eval_acts, test)
            result = score(probs, labels[test], classes, fold.known, {"val": val_threshold})
            fold_thresholds[left] = choose_threshold(
                result["_conf"], result["_correct"], args.target_accuracy
            )
            kept[left] = result
            entry["left_out"] = {k: v for k, v in result.items() if not k.startswith("_")}
            entry["left_out"]["threshold_for_target"] = fold_thresholds[left]
            entry["left_out_by_source"] = by_source(
                cells, test, probs, labels, classes, fold.known, {"val": val_threshold}
            )
            entry["guard"] = guard_report(guard, halves, feats, args.seed, args.guard_batches)
        else:
            entry["guard"] = guard_report(guard, halves, None, args.seed, args.guard_batches)
            # The shipped guard is calibrated on every val cell of every lab.
            guard.calibrate(
                [torch.cat(pair) for pair in halves],
                sizes=sorted({1, 5, *args.guard_batches}),
                seed=args.seed,
            )
            entry["guard_shipped_thresholds"] = dict(guard.thresholds)
            report["all_guard"] = guard
        report["folds"][left] = entry
        if left == "all" and args.out:
            # Provisional (its own val threshold only) until the left-out folds give the
            # cross-lab threshold; rewritten below.
            write_model(args, fold, {**report, "cross_threshold": None}, classes)
        # A long run's folds are each on disk as soon as they are done.
        write_report(args, report, t_start)
        print(f"fold {left} done at {time.time() - t_start:.0f}s", flush=True)

    # 4. One threshold that holds on every left-out lab.
    # A lab on which no threshold reaches the target is listed: its cells can only be kept from
    # auto-acceptance by the batch guard.
    reached = [t for t in fold_thresholds.values() if t is not None]
    cross = max(reached) if reached else None
    report["cross_threshold"] = cross
    report["threshold_unattainable_on"] = sorted(k for k, t in fold_thresholds.items() if t is None)
    for left, result in kept.items():
        acc = (
            result["_conf"] >= cross if cross is not None else np.zeros(len(result["_conf"]), bool)
        )
        report["folds"][left]["left_out"]["coverage@cross"] = float(acc.mean())
        report["folds"][left]["left_out"]["accuracy_above@cross"] = (
            float(result["_correct"][acc].mean()) if acc.any() else None
        )

    # 6. The all-labs model, and the report so far (the adaptation curve is the slow part).
    if args.out and "all" in folds:
        write_model(args, folds["all"], report, classes)
    write_report(args, report, t_start)
    print(format_table(report), flush=True)

    # 7. Adaptation learning curve.
    if args.adapt_lab in folds:
        report["adaptation"] = adaptation_curve(
            args, folds[args.adapt_lab], eval_acts, aug_acts, cell_lab, is_val, labels, classes
        )
        write_report(args, report, t_start)
    return report


def write_report(args: argparse.Namespace, report: dict[str, Any], t_start: float) -> None:
    report["seconds"] = round(time.time() - t_start, 1)
    if args.json:
        body = {k: v for k, v in report.items() if k != "all_guard"}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(body, indent=2, default=str) + "\n")


def adaptation_curve(
    args: argparse.Namespace,
    fold: Fold,
    eval_acts: torch.Tensor,
    aug_acts: torch.Tensor,
    cell_lab: np.ndarray,
    is_val: np.ndarray,
    labels: torch.Tensor,
    classes: Sequence[str],
) -> dict[str, Any]:
    """Accuracy on lab L's val cells after fine-tuning the fold that never saw L on n of L's
    training cells per class (mean and each seed), over all of L's classes and over the classes
    the fold already knew."""
    start = copy.deepcopy(fold.model.state_dict())
    known_before = fold.known.clone()
    temperature = fold.temperature
    pool = np.nonzero((cell_lab == args.adapt_lab) & ~is_val)[0]
    test = np.nonzero((cell_lab == args.adapt_lab) & is_val)[0]
    y_test = labels[test]
    lab_classes = sorted(set(labels[pool].tolist()))
    curve: dict[str, Any] = {}
    for n in args.adapt_n:
        runs = []
        for seed in range(args.adapt_seeds if n else 1):
            rng = np.random.default_rng(seed)
            picked = np.concatenate(
                [rng.permutation(pool[labels[pool].numpy() == c])[:n] for c in lab_classes]
            )
            if n:
                fold.args = argparse.Namespace(**{**vars(args), "seed": seed})
                fold.fit(
                    eval_acts,
                    aug_acts,
                    picked,
                    np.zeros(0, dtype=np.int64),
                    epochs=args.adapt_epochs,
                    head_epochs=0,
                    start=start,
                )
                fold.known = known_before | fold.masks[torch.as_tensor(picked)].any(0)
            else:
                fold.model.load_state_dict(start)
                fold.known = known_before
            fold.temperature = temperature
            probs, _ = fold.probs(eval_acts, test)
            pred = probs.argmax(1)
            common = known_before[y_test]
            runs.append(
                {
                    "seed": seed,
                    "accuracy_all": float((pred == y_test).float().mean()),
                    "accuracy_common": float((pred[common] == y_test[common]).float().mean()),
                }
            )
        curve[str(n)] = {
            "accuracy_all": float(np.mean([r["accuracy_all"] for r in runs])),
            "accuracy_common": float(np.mean([r["accuracy_common"] for r in runs])),
            "runs": runs,
        }
        print(f"adapt n={n}: {curve[str(n)]}", flush=True)
    fold.args = args
    fold.model.load_state_dict(start)
    fold.known = known_before
    return {
        "lab": args.adapt_lab,
        "n_test": len(test),
        "common_classes": [c for c, k in zip(classes, known_before.tolist(), strict=True) if k],
        "curve": curve,
    }


def shipped_threshold(cross: float | None, val: float | None) -> float | None:
    """The stricter of the cross-lab threshold and the all-labs model's own val threshold."""
    found = [t for t in (cross, val) if t is not None]
    return max(found) if found else None


def write_model(
    args: argparse.Namespace, fold: Fold, report: dict[str, Any], classes: list[str]
) -> None:
    out = Path(args.out)
    entry = report["folds"]["all"]
    threshold = shipped_threshold(report["cross_threshold"], entry["val_threshold"])
    metrics = {
        "split": "val (every source's val side; cached eval view)",
        **entry["val"],
        "cross_threshold": report["cross_threshold"],
        "val_threshold": entry["val_threshold"],
        "left_out": {k: v["left_out"] for k, v in report["folds"].items() if "left_out" in v},
    }
    mean, std = ARCHS[args.arch].mean, ARCHS[args.arch].std
    save_checkpoint(
        out,
        fold.model,
        arch=args.arch,
        classes=classes,
        input_size=args.input_size,
        mean=mean,
        std=std,
        recipe={k: v for k, v in vars(args).items()},
        metrics=metrics,
        temperature=fold.temperature,
        threshold=threshold,
        resize=args.resize,
        ood=report["all_guard"].to_dict(),
    )
    print(f"wrote {out} (threshold {threshold})", flush=True)


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'left out':<10}{'n':>6}{'accuracy':>10}{'macro-F1':>10}{'coverage':>10}"
        f"{'acc>thr':>9}{'AUROC20':>9}{'flag20':>8}{'AUROC100':>9}{'falarm20':>9}"
    ]

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    for left, e in report["folds"].items():
        if "left_out" not in e:
            continue
        lo, g = e["left_out"], e["guard"]
        g20 = g.get("batch_20", {})
        lines.append(
            f"{left:<10}{lo['n']:>6}{f(lo['accuracy']):>10}{f(lo['macro_f1']):>10}"
            f"{f(lo.get('coverage@cross')):>10}{f(lo.get('accuracy_above@cross')):>9}"
            f"{f(g20.get('auroc')):>9}{f(g20.get('flagged')):>8}"
            f"{f(g.get('batch_100', {}).get('auroc')):>9}{f(g20.get('false_alarm')):>9}"
        )
    lines.append(
        f"cross-lab threshold: {report['cross_threshold']} (no threshold reaches the target on: "
        f"{report['threshold_unattainable_on'] or 'none'})"
    )
    return "\n".join(lines)


def write_val_folder(cells: Sequence[Cell], is_val: np.ndarray, root: Path) -> int:
    """Symlink each val cell that is a whole file as root/SOURCE/CLASS/FILE, so the shipped
    model can be scored end to end on exactly these cells (`python -m ml.evaluate --data
    root/SOURCE`). Cells cut from a field by a box are not files and are left out."""
    linked = 0
    for cell, val in zip(cells, is_val, strict=True):
        if not val or cell.box is not None:
            continue
        link = root / cell.source / cell.label / cell.path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(cell.path.resolve())
        linked += 1
    return linked


def main(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.time()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    specs = [SourceSpec.parse(s) for s in args.source]
    root = cache_root(args)
    cells = load_cells(args, specs)
    classes = sorted({c.label for c in cells})
    if args.val_folder:
        is_val = split_cells(cells, classes, args.val_fraction, args.seed)
        linked = write_val_folder(cells, is_val, Path(args.val_folder))
        print(f"linked {linked} val cells under {args.val_folder}", flush=True)
    weights = None if args.weights == "none" else args.weights
    model = build_model(args.arch, len(classes), pretrained=weights)
    trunk, _ = split_trunk_tail(model, args.arch, args.trunk_blocks)
    eval_acts, aug_acts = build_cache(args, cells, classes, trunk, root)
    print(f"cache ready in {time.time() - t_start:.0f}s: {tuple(eval_acts.shape)}", flush=True)
    if args.stage == "cache":
        return {}
    return run(args, specs, cells, classes, model, eval_acts, aug_acts, t_start)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
