"""Train a blood-cell classifier by transfer learning from ImageNet weights.

    python -m ml.train --data ../shared/data/pbc/dev --arch mobilenet_v2 \
        --weights ../shared/weights/mobilenet_v2_imagenet1k.pth --out ml/weights/pbc8-mobilenetv2.pt

The recipe is shaped for a small CPU, where fine-tuning the whole network for many epochs is too
slow, but it runs unchanged (and faster) on a GPU:

1. Split DATA into train/val, stratified by class and grouped so near-copies stay on one side.
2. Run the frozen trunk (features[:K]) once over --views augmented copies of every training image
   and once over the eval view of every val image, and keep the activations in memory (float16).
   The trunk costs most of the compute; caching it makes an epoch ~5x cheaper.
3. Train the head alone for --head-epochs (the new layer must settle before its gradients reach
   pretrained weights), then fine-tune the tail (features[K:] + head), drawing one cached view
   per image per epoch. ReduceLROnPlateau on val loss, early stopping on val accuracy.
4. Reload the best epoch, run the full model on the val images, fit temperature scaling, choose
   the confidence threshold, and write the checkpoint with metrics JSON, report and plots.

Each epoch writes <out stem>.last.pt; --resume continues from it (the cache is rebuilt, exactly,
from the seed).

`main` is the four steps in order, as in torchvision's classification reference: `load_data`,
`build_cache`, `fit_tail` (after `make_fit`, which restores --resume state) and
`calibrate_and_write`. Step 3 is `ml.fit.fit`, the one fit loop, which `ml.crosscheck` runs
too; `fit_tail` hands it this command's cache and options. `ml.fit.on_device` is the one place
that moves a batch to the device with CUDA's channels-last memory and float16 autocast.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ml.checkpoint import atomic_save, load_checkpoint, read_metadata, save_checkpoint
from ml.data import ImageList, grouped_stratified_split, list_samples, near_duplicate_groups
from ml.fit import (
    Cells,
    FitState,
    Recipe,
    evaluate,
    fit_temperature_over,
    on_device,
    progress,
    seed_everything,
    start_fit,
)
from ml.fit import fit as run_fit
from ml.inference import PooledFeatures
from ml.metrics import (
    choose_threshold,
    coverage_curve,
    format_report,
    group_vote_accuracy,
    summarize,
)
from ml.model import ARCHS, build_model, default_weights, split_trunk_tail
from ml.ood import OODGuard, fit_guard
from ml.plots import plot_confusion, plot_coverage, plot_curves
from ml.transforms import (
    RESIZE_MODES,
    eval_transform,
    train_transform,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True, help="folder with one sub-folder per class")
    p.add_argument("--out", required=True, help="checkpoint path, e.g. ml/weights/NAME.pt")
    p.add_argument("--arch", default="mobilenet_v2", choices=sorted(ARCHS))
    p.add_argument(
        "--weights",
        default=default_weights(),
        help="ImageNet state_dict file, 'download', or 'none' "
        "(default: $HEMATOVISION_IMAGENET_WEIGHTS, else 'download')",
    )
    p.add_argument("--epochs", type=int, default=20, help="maximum epochs, head epochs included")
    p.add_argument("--head-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0, help="for the training loss only")
    p.add_argument("--input-size", type=int, default=192)
    p.add_argument(
        "--trunk-blocks", type=int, default=14, help="K: features[:K] stay frozen and are cached"
    )
    p.add_argument("--views", type=int, default=3, help="augmented views cached per train image")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument(
        "--group-by",
        choices=["file", "near-duplicate", "dhash"],
        default="file",
        help="'near-duplicate' groups near-copies of one cell (Kaggle set) before splitting "
        "(ml.data.near_duplicate_groups); 'dhash' is its former name",
    )
    p.add_argument(
        "--naive-holdout",
        type=float,
        default=0.0,
        help="leak report: also hold out this fraction of the training side's images at random "
        "(image level, so their near-copies stay in training) and score the final model on them",
    )
    p.add_argument(
        "--resize",
        choices=list(RESIZE_MODES),
        default="crop",
        help="'crop': shorter side + centre crop; 'pad': pad to square first (4:3 frames)",
    )
    p.add_argument("--lr-patience", type=int, default=2)
    p.add_argument("--patience", type=int, default=5, help="early stopping patience (epochs)")
    p.add_argument(
        "--target-accuracy",
        type=float,
        default=0.995,
        help="accuracy required above the 'unidentified' threshold",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--print-freq", type=int, default=20)
    p.add_argument("--resume", action="store_true", help="continue from <out stem>.last.pt")
    p.add_argument("--limit", type=int, default=0, help="use only N images (smoke tests)")
    p.add_argument(
        "--extra-train",
        action="append",
        default=[],
        metavar="DIR",
        help="more training images from another source (repeatable): its folders matching a "
        "class of --data (case-insensitively) join the training side only; validation stays "
        "on --data alone",
    )
    p.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="fine-tune this model (e.g. a shipped one) on --data instead of ImageNet weights: "
        "its classes, architecture, input size and resize mode are kept (those options are "
        "ignored); --data's folders must be among its classes, and the loss is masked to them, "
        "so a class the folder lacks is not taught as absent",
    )
    p.add_argument("--stain-jitter", action="store_true", help="ml.transforms.StainJitter views")
    p.add_argument(
        "--shift",
        type=float,
        default=0.0,
        help="move the cell off the centre of the training views by up to this fraction of the "
        "side (ml.transforms.RandomShift): the square's centre stops being evidence",
    )
    return p


def apply_init(args: argparse.Namespace) -> list[str] | None:
    """With --init, take the checkpoint's classes and geometry into args; returns its classes."""
    if not args.init:
        return None
    meta = read_metadata(args.init)
    args.arch, args.input_size, args.resize = meta.arch, meta.input_size, meta.resize
    return meta.classes


@torch.inference_mode()
def cache_activations(
    trunk: nn.Module,
    dataset: ImageList,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    desc: str,
    print_freq: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trunk outputs (float16, on CPU) and labels for every item of dataset, in order."""
    trunk.eval()
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    chunks, labels = [], []
    with progress(len(dataset), desc, print_freq=print_freq * batch_size) as bar:
        for x, y in loader:
            with on_device(x, device) as x:
                chunks.append(trunk(x).to(torch.float16).cpu().contiguous())
            labels.append(y)
            bar.update(len(y))
    return torch.cat(chunks), torch.cat(labels)


def add_extra_training(
    samples: list[tuple[Path, int]], classes: list[str], folders: Iterable[str]
) -> list[int]:
    """Append the extra sources' images of known classes to samples; return their indices."""
    added: list[int] = []
    for folder in folders:
        found = list_samples(folder)
        unknown = sorted({c for _, c in found if c not in classes})
        if unknown:
            print(f"--extra-train {folder}: ignoring folders {unknown} (no such class)", flush=True)
        for path, name in found:
            if name in classes:
                added.append(len(samples))
                samples.append((path, classes.index(name)))
    return added


# Data ----------------------------------------------------------------------------------------


@dataclass
class Data:
    """The samples and their split: what `load_data` decides before any model exists."""

    classes: list[str]
    samples: list[tuple[Path, int]]
    groups: list[int]
    train_idx: list[int]
    val_idx: list[int]
    naive_idx: list[int]
    extra_idx: list[int]
    train_set: ImageList
    val_set: ImageList


def load_data(args: argparse.Namespace, init_classes: list[str] | None = None) -> Data:
    """List --data, group near-copies, split train/val (and the naive holdout), add
    --extra-train, and build the train (augmented) and val (eval) datasets. With
    init_classes (--init), labels index those classes."""
    found = list_samples(args.data)
    if args.limit:
        rng = random.Random(args.seed)  # noqa: S311 - a reproducible subset, not a secret
        found = [found[i] for i in sorted(rng.sample(range(len(found)), args.limit))]
    classes = sorted({c for _, c in found})
    if init_classes is not None:
        unknown = sorted(set(classes) - set(init_classes))
        if unknown:
            raise SystemExit(
                f"--init {args.init}: the model has no class for folders {unknown} "
                f"(its classes: {init_classes})"
            )
        classes = list(init_classes)
    samples = [(p, classes.index(c)) for p, c in found]
    labels = [y for _, y in samples]
    if args.group_by in ("near-duplicate", "dhash"):
        t0 = time.time()
        groups = near_duplicate_groups([p for p, _ in samples], labels)
        print(f"near-duplicate groups in {time.time() - t0:.0f}s", flush=True)
    else:
        groups = list(range(len(samples)))
    train_idx, val_idx = grouped_stratified_split(labels, groups, args.val_fraction, args.seed)
    naive_idx: list[int] = []
    if args.naive_holdout > 0:
        # Image-level holdout inside the training side: what a naive random split would score.
        side = [labels[i] for i in train_idx]
        keep, held = grouped_stratified_split(
            side, list(range(len(side))), args.naive_holdout, args.seed + 1
        )
        naive_idx = [train_idx[i] for i in held]
        train_idx = [train_idx[i] for i in keep]
    # After the naive holdout, so the leak report scores images of --data only.
    extra_idx = add_extra_training(samples, classes, args.extra_train)
    train_idx += extra_idx
    print(
        f"{len(classes)} classes {classes}; train {len(train_idx)}, val {len(val_idx)}, "
        f"naive holdout {len(naive_idx)}, {len(set(groups))} groups, "
        f"{len(extra_idx)} extra train",
        flush=True,
    )
    mean, std = ARCHS[args.arch].mean, ARCHS[args.arch].std
    size, rz = args.input_size, args.resize
    return Data(
        classes=classes,
        samples=samples,
        groups=groups,
        train_idx=train_idx,
        val_idx=val_idx,
        naive_idx=naive_idx,
        extra_idx=extra_idx,
        train_set=ImageList(
            [samples[i] for i in train_idx],
            train_transform(size, mean, std, resize=rz, stain=args.stain_jitter, shift=args.shift),
        ),
        val_set=ImageList([samples[i] for i in val_idx], eval_transform(size, mean, std, rz)),
    )


# Cache ---------------------------------------------------------------------------------------


@dataclass
class Cache:
    """Frozen-trunk activations: `views` augmented copies of the training side (view-major: row
    v * N + i is view v of image i) and the eval view of the val side."""

    train_acts: torch.Tensor
    train_y: torch.Tensor
    val_acts: torch.Tensor
    val_y: torch.Tensor
    views: int


def build_cache(
    args: argparse.Namespace, trunk: nn.Module, data: Data, device: torch.device
) -> Cache:
    t0 = time.time()
    views = []
    train_y = torch.zeros(0, dtype=torch.long)
    for v in range(args.views):
        acts, train_y = cache_activations(
            trunk,
            data.train_set,
            batch_size=args.batch_size,
            workers=args.workers,
            device=device,
            desc=f"cache view {v + 1}/{args.views}",
            print_freq=args.print_freq,
        )
        views.append(acts)
    train_acts = torch.cat(views)
    del views
    val_acts, val_y = cache_activations(
        trunk,
        data.val_set,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        desc="cache val",
        print_freq=args.print_freq,
    )
    print(
        f"cached {tuple(train_acts.shape)} + {tuple(val_acts.shape)} float16 "
        f"({(train_acts.numel() + val_acts.numel()) * 2 / 2**20:.0f} MiB) "
        f"in {time.time() - t0:.0f}s",
        flush=True,
    )
    return Cache(train_acts, train_y, val_acts, val_y, args.views)


# Fit -----------------------------------------------------------------------------------------


# The optimisation state of the tail, saved after every epoch to <out stem>.last.pt.
Fit = FitState


def fit_recipe(args: argparse.Namespace) -> Recipe:
    """The one fit loop's recipe (ml.fit) from ml.train's options."""
    return Recipe(
        epochs=args.epochs,
        head_epochs=args.head_epochs,
        patience=args.patience,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        lr_patience=args.lr_patience,
        batch_size=args.batch_size,
        seed=args.seed,
        # Re-seeded every epoch, so a resumed run draws the same batches.
        reseed_each_epoch=True,
        eval_batch_size=args.batch_size,
        print_freq=args.print_freq,
    )


def make_fit(args: argparse.Namespace, model: nn.Module, tail: nn.Module, last_path: Path) -> Fit:
    """A fresh optimiser and schedule for the tail, or the state of --resume's last epoch."""
    fit = start_fit(tail, fit_recipe(args))
    if args.resume and last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        fit.optimizer.load_state_dict(state["optimizer"])
        fit.scheduler.load_state_dict(state["scheduler"])
        fit.start_epoch, fit.history = state["epoch"], state["history"]
        fit.since_best, fit.best_key = state["since_best"], tuple(state["best_key"])
        fit.best_epoch, fit.best_state = state["best_epoch"], state["best_state"]
        fit.rng = state["rng"]
        print(f"resumed from {last_path} at epoch {fit.start_epoch}", flush=True)
    return fit


def fit_tail(
    args: argparse.Namespace,
    model: nn.Module,
    tail: nn.Module,
    cache: Cache,
    fit: Fit,
    device: torch.device,
    last_path: Path,
    n_classes: int = 0,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Fit:
    """Train the head, then the tail, on the cached activations (`ml.fit.fit`); keep the best
    epoch by val accuracy (then loss), stop early; save resumable state every epoch."""
    if fit.rng is not None:
        # Restored only now, so the cache drew the same augmentations as the first run.
        torch.set_rng_state(fit.rng)
    n_train, n_val = len(cache.train_y), len(cache.val_y)
    train_masks = val_masks = None
    if args.init:
        # Only the classes --data labels enter the loss: fine-tuning on one lab's folder must not
        # teach the model's other classes as absent.
        present = torch.zeros(n_classes, dtype=torch.bool)
        present[torch.unique(torch.cat([cache.train_y, cache.val_y]))] = True
        train_masks, val_masks = present.expand(n_train, -1), present.expand(n_val, -1)
    # The cache is view-major (row v * N + i is view v of image i): one tensor per view.
    views = cache.train_acts.view(cache.views, n_train, *cache.train_acts.shape[1:]).unbind(0)

    def after_epoch(state: FitState) -> None:
        if on_epoch is not None:
            on_epoch({**state.history[-1], "epochs": args.epochs})
        atomic_save(
            {
                "epoch": state.history[-1]["epoch"] + 1,
                "model": model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "history": state.history,
                "since_best": state.since_best,
                "best_key": list(state.best_key),
                "best_epoch": state.best_epoch,
                "best_state": state.best_state,
                "rng": torch.get_rng_state(),
            },
            last_path,
        )

    return run_fit(
        model,
        tail,
        fit_recipe(args),
        fit,
        train=Cells(views, cache.train_y, train_masks),
        train_idx=torch.arange(n_train),
        val=Cells([cache.val_acts], cache.val_y, val_masks),
        val_idx=torch.arange(n_val),
        device=device,
        after_epoch=after_epoch,
    )


# Calibrate and write ---------------------------------------------------------------------------


def calibrate_and_write(
    args: argparse.Namespace,
    model: nn.Module,
    data: Data,
    fit: Fit,
    device: torch.device,
    out: Path,
    t_start: float,
) -> dict[str, Any]:
    """Run the best epoch end to end on the val images, fit the temperature, choose the
    threshold, and write the checkpoint, metrics JSON, report and plots."""
    if fit.best_state is not None:
        model.load_state_dict(fit.best_state)
    model = model.float()
    criterion = nn.CrossEntropyLoss()
    bs, classes = args.batch_size, data.classes
    loader = DataLoader(data.val_set, batch_size=bs, num_workers=args.workers)
    val_loss, _, logits, y = evaluate(model, criterion, loader, device)
    temperature = fit_temperature_over(logits, y)
    probs = torch.softmax(logits / temperature, dim=1)
    confidence = probs.max(1).values.numpy()
    correct = (probs.argmax(1) == y).numpy()
    threshold = choose_threshold(confidence, correct, args.target_accuracy)
    summary = summarize(probs.numpy(), y.numpy(), classes, threshold)
    raw_summary = summarize(torch.softmax(logits, dim=1).numpy(), y.numpy(), classes, None)
    naive: dict[str, Any] | None = None
    if data.naive_idx:
        naive_set = ImageList([data.samples[i] for i in data.naive_idx], data.val_set.transform)
        loader = DataLoader(naive_set, batch_size=bs, num_workers=args.workers)
        _, _, n_logits, n_y = evaluate(model, criterion, loader, device)
        n_sum = summarize(
            torch.softmax(n_logits / temperature, 1).numpy(), n_y.numpy(), classes, threshold
        )
        naive = {k: n_sum[k] for k in ("n", "accuracy", "macro_f1", "coverage")}
        print(
            f"leak report: naive image-level holdout accuracy {naive['accuracy']:.4f} vs "
            f"grouped val {summary['accuracy']:.4f}",
            flush=True,
        )
    val_groups = [data.groups[i] for i in data.val_idx]
    cells = group_vote_accuracy(y.numpy(), probs.argmax(1).numpy(), val_groups)
    if args.group_by != "file":
        print(
            f"by source cell: {cells['correct']} of {cells['n']} val cells right by majority vote "
            f"({cells['accuracy']:.4f})",
            flush=True,
        )
    metrics = {
        "split": "val",
        **summary,
        "cells": cells,
        "loss": val_loss,
        "temperature": temperature,
        "ece_uncalibrated": raw_summary["ece"],
        "nll_calibrated": float(nn.functional.cross_entropy(logits / temperature, y)),
        "target_accuracy": args.target_accuracy,
        "best_epoch": fit.best_epoch,
        "n_train": len(data.train_idx),
        "n_extra_train": len(data.extra_idx),
        "n_val": len(data.val_idx),
        "group_by": args.group_by,
        "n_groups": len(set(data.groups)),
        "naive_holdout": naive,
        "train_seconds": round(time.time() - t_start, 1),
        "device": str(device),
        "coverage_curve": coverage_curve(confidence, correct),
        "history": fit.history,
    }
    guard = None
    if args.init:
        # The base model's guard is not carried over (the features moved): a new one is fitted
        # on the lab's own training cells and calibrated on its val cells.
        guard, metrics["guard"] = refit_guard(args, model, data, device)
        print(f"batch guard: {metrics['guard']}", flush=True)
    mean, std = ARCHS[args.arch].mean, ARCHS[args.arch].std
    save_checkpoint(
        out,
        model,
        arch=args.arch,
        classes=classes,
        input_size=args.input_size,
        mean=mean,
        std=std,
        recipe=dict(vars(args)),
        metrics={k: v for k, v in metrics.items() if k not in ("history", "coverage_curve")},
        temperature=temperature,
        threshold=threshold,
        resize=args.resize,
        ood=None if guard is None else guard.to_dict(),
    )
    stem = out.parent / out.stem
    Path(f"{stem}.metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    Path(f"{stem}.report.txt").write_text(format_report(summary) + "\n")
    plot_curves(fit.history, f"{stem}.curves.png")
    plot_confusion(
        summary["confusion"]["matrix"], summary["confusion"]["labels"], f"{stem}.confusion.png"
    )
    plot_coverage(
        metrics["coverage_curve"],
        f"{stem}.coverage.png",
        threshold=threshold,
        target=args.target_accuracy,
    )
    print(format_report(summary), flush=True)
    print(f"temperature {temperature:.3f}; wrote {out} in {time.time() - t_start:.0f}s", flush=True)
    return metrics


@torch.inference_mode()
def refit_guard(
    args: argparse.Namespace, model: nn.Module, data: Data, device: torch.device
) -> tuple[OODGuard | None, dict[str, Any]]:
    """A batch guard (`ml.ood.fit_guard`) on the model's pooled features of the eval view:
    fitted on the training images of --data (not --extra-train's), calibrated on its val
    images. (None, why) when there are too few of either."""
    extra = set(data.extra_idx)
    own = [i for i in data.train_idx if i not in extra]
    pooled = PooledFeatures(model.get_submodule("features")).eval()

    def embed(indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        images = ImageList([data.samples[i] for i in indices], data.val_set.transform)
        feats, labels = [], []
        for x, y in DataLoader(images, batch_size=args.batch_size, num_workers=args.workers):
            feats.append(pooled(x.to(device).float()).float().cpu())
            labels.append(y)
        if not feats:
            return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
        return torch.cat(feats), torch.cat(labels)

    train_x, train_y = embed(own)
    val_x, _ = embed(data.val_idx)
    return fit_guard(train_x, train_y, val_x, seed=args.seed)


def main(
    args: argparse.Namespace, on_epoch: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Train (or fine-tune, with --init) and write the checkpoint; returns its metrics.

    on_epoch, if given, is called after every epoch with that epoch's history row plus
    "epochs" (the maximum): a caller's progress report (the portal's adaptation job)."""
    t_start = time.time()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    last_path = out.with_suffix(".last.pt")

    init_classes = apply_init(args)
    data = load_data(args, init_classes)
    if args.init:
        model = load_checkpoint(args.init)[0].to(device)
    else:
        weights = None if args.weights == "none" else args.weights
        model = build_model(args.arch, len(data.classes), pretrained=weights).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trunk, tail = split_trunk_tail(model, args.arch, args.trunk_blocks)
    trunk.requires_grad_(False)
    fit = make_fit(args, model, tail, last_path)
    if fit.start_epoch < args.epochs:  # a resumed run with no epochs left needs no cache
        cache = build_cache(args, trunk, data, device)
        fit = fit_tail(
            args, model, tail, cache, fit, device, last_path, len(data.classes), on_epoch
        )
    return calibrate_and_write(args, model, data, fit, device, out, t_start)


def fine_tune(
    *,
    init: str | Path,
    data: str | Path,
    out: str | Path,
    options: Sequence[str] = (),
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """`python -m ml.train --init INIT --data DATA --out OUT OPTIONS...` as a function call:
    fine-tune a checkpoint on one lab's folder (one sub-folder per class); returns the metrics
    on the folder's own val split. The portal's adaptation worker calls this."""
    argv = ["--init", str(init), "--data", str(data), "--out", str(out), *options]
    return main(get_args_parser().parse_args(argv), on_epoch=on_epoch)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
