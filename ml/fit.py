"""The one fit loop: a model's tail trained on cached activations of its frozen trunk.

`ml.train` (one image folder) and `ml.crosscheck` (several sources, leave one lab out) both run
the frozen trunk (features[:K]) once over their cells, keep its outputs, and train the tail
(features[K:] + head) on them. This is that training, written once, as torchvision's
classification reference keeps one train loop apart from its presets:

- AdamW on the tail's parameters; ReduceLROnPlateau (x0.2 after `lr_patience` epochs without a
  lower val loss), stepped from the first epoch after the head epochs;
- the head alone for `head_epochs` (`set_phase`: the new layer settles before its gradients
  reach pretrained weights), then the whole tail;
- each epoch, every training cell once, in one of its cached views drawn at random;
- cross-entropy with label smoothing on the training loss, over each cell's allowed classes
  when the cells carry masks (`ml.sources.masked_cross_entropy`: a class a source does not
  label is never taught as absent);
- the best epoch by val accuracy, then val loss, kept; early stop after `patience` epochs
  without a better one (never in the head epochs);
- `fit_temperature_over`: the temperature fitted on val logits, over the classes taught.

What the callers choose is a `Recipe` (their command-line options) and the cells (`Cells`).
Two choices differ between them and are kept, so that each gives the numbers it gave before
the loops were one (bench/fit_equivalence.py checks this bit for bit): `reseed_each_epoch`
(ml.train re-seeds its draws every epoch so that --resume draws the same batches;
ml.crosscheck draws from one stream, as the shipped `wbc-mobilenetv2.pt` was trained) and
`eval_batch_size`. How each computes its val loss follows from its cells: `known` (the
crosscheck's classes taught in a fold: the others' logits are -inf) or the val cells' masks
(ml.train --init's classes present in the folder).
"""

from __future__ import annotations

import copy
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ml.metrics import fit_temperature
from ml.sources import masked_cross_entropy

# (x, y) or (x, y, mask): mask N x C says which classes the loss of each row may use.
Batch = tuple[torch.Tensor, ...]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def on_device(x: torch.Tensor, device: torch.device) -> Iterator[torch.Tensor]:
    """x moved to device, for a forward pass in the block: on CUDA, channels-last memory and
    float16 autocast (the one place training decides this); on a CPU, plain fp32."""
    cuda = device.type == "cuda"
    x = x.to(device, non_blocking=True)
    if cuda and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
        yield x


class _LogLines(tqdm):  # type: ignore[type-arg]
    """tqdm writing each refresh as its own line: a log file keeps readable progress lines
    instead of carriage-return redraws."""

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        self.fp.write((msg or self.__str__()) + "\n")
        self.fp.flush()


def progress(total: int, desc: str, *, print_freq: int, unit: str = "img") -> tqdm:  # type: ignore[type-arg]
    """A progress bar over `total` units: redrawn in place on a terminal; in a log, one line
    every print_freq updates (and the last)."""
    if sys.stdout.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stdout, dynamic_ncols=True)
    return _LogLines(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stdout,
        ascii=True,
        ncols=100,
        mininterval=0,
        miniters=print_freq,
    )


def set_phase(tail: nn.Module, head_only: bool) -> None:
    """Head phase: tail blocks frozen and in eval mode (keep their BatchNorm statistics)."""
    tail.train()
    for p in tail.blocks.parameters():  # type: ignore[union-attr]
        p.requires_grad_(not head_only)
    if head_only:
        tail.blocks.eval()  # type: ignore[union-attr]


def cell_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy; with mask (N x C), over each row's allowed classes only."""
    if mask is None:
        return nn.functional.cross_entropy(logits, target, label_smoothing=label_smoothing)
    return masked_cross_entropy(logits, target, mask, label_smoothing=label_smoothing)


@dataclass(frozen=True)
class Recipe:
    """What a fit does, from the caller's options (see the module's docstring)."""

    epochs: int
    head_epochs: int
    patience: int
    lr: float
    weight_decay: float
    label_smoothing: float
    lr_patience: int
    batch_size: int
    seed: int
    reseed_each_epoch: bool
    eval_batch_size: int
    print_freq: int = 20


@dataclass
class Cells:
    """Cached trunk activations of N cells: views[v][i] is view v of cell i (float16), with
    labels (N) and, for a masked loss, the classes each cell's loss may use (N x C)."""

    views: Sequence[torch.Tensor]
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def take(self, idx: torch.Tensor, view: torch.Tensor | None = None) -> Batch:
        """The float32 batch of cells idx, cell idx[j] in its view view[j] (default: view 0)."""
        if view is None or len(self.views) == 1:
            x = self.views[0][idx]
        else:
            first = self.views[0]
            x = torch.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
            for v, acts in enumerate(self.views):
                chosen = view == v
                if bool(chosen.any()):
                    x[chosen] = acts[idx[chosen]]
        y = self.labels[idx]
        if self.masks is None:
            return x.float(), y
        return x.float(), y, self.masks[idx]


@dataclass
class FitState:
    """The optimisation state of a tail: what ml.train saves after every epoch to resume."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    since_best: int = 0
    best_key: tuple[float, float] = (-1.0, 0.0)
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    rng: torch.Tensor | None = None  # ml.train --resume: restored after the cache is rebuilt


def start_fit(tail: nn.Module, recipe: Recipe) -> FitState:
    """A fresh optimiser and schedule for the tail."""
    optimizer = torch.optim.AdamW(tail.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.2, patience=recipe.lr_patience
    )
    return FitState(optimizer, scheduler)


def train_one_epoch(
    model: nn.Module,
    criterion: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    n_batches: int,
    device: torch.device,
    epoch: int,
    scaler: torch.amp.GradScaler,
    print_freq: int,
) -> tuple[float, float]:
    """One pass of SGD over batches of (x, y) or (x, y, mask), the loss criterion(logits, y
    [, mask]); returns (mean loss, accuracy) on the training batches."""
    total_loss, correct, seen = 0.0, 0, 0
    with progress(n_batches, f"epoch {epoch}", print_freq=print_freq, unit="batch") as bar:
        for x, y, *mask in batches:
            y = y.to(device, non_blocking=True)
            with on_device(x, device) as x:
                logits = model(x)
                loss = criterion(logits, y, *(m.to(device) for m in mask))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix_str(f"loss {total_loss / seen:.4f} acc {correct / seen:.4f}", False)
            bar.update()
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterable[Batch],
    device: torch.device,
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(mean loss, accuracy, logits, labels) over batches of (x, y), in eval mode."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y, *_ in batches:
        with on_device(x, device) as x:
            all_logits.append(model(x).float().cpu())
        all_labels.append(y)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    loss = float(criterion(logits, labels))
    acc = float((logits.argmax(1) == labels).float().mean())
    return loss, acc, logits, labels


@torch.inference_mode()
def evaluate_cells(
    tail: nn.Module,
    cells: Cells,
    idx: torch.Tensor,
    device: torch.device,
    *,
    batch_size: int,
    known: torch.Tensor | None = None,
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(loss, accuracy, logits, labels) of cells idx in their view 0. With known (C bool), the
    logits of the other classes are -inf (a fold never predicts a class it was not taught);
    with the cells' masks, the loss is over each cell's allowed classes."""
    tail.eval()
    chunks = []
    for s in range(0, len(idx), batch_size):
        x = cells.take(idx[s : s + batch_size])[0]
        with on_device(x, device) as x:
            chunks.append(tail(x).float().cpu())
    logits, labels = torch.cat(chunks), cells.labels[idx]
    if known is not None:
        logits = logits.masked_fill(~known, float("-inf"))
    masks = None if cells.masks is None else cells.masks[idx]
    loss = float(cell_loss(logits, labels, masks))
    acc = float((logits.argmax(1) == labels).float().mean())
    return loss, acc, logits, labels


def fit(
    model: nn.Module,
    tail: nn.Module,
    recipe: Recipe,
    state: FitState,
    *,
    train: Cells,
    train_idx: torch.Tensor,
    val: Cells,
    val_idx: torch.Tensor,
    device: torch.device,
    known: torch.Tensor | None = None,
    name: str = "",
    after_epoch: Callable[[FitState], None] | None = None,
) -> FitState:
    """Train the head, then the tail (a view of model: training it trains model in place), on
    cells train_idx, from epoch state.start_epoch to recipe.epochs; keep the best epoch on
    val_idx (state.best_state, the whole model's), stop early. With no val cells: every epoch,
    no schedule, no best. after_epoch(state) runs at the end of every epoch (ml.train saves
    its resumable state there)."""
    t_start = time.time()
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    bs = recipe.batch_size
    generator = torch.Generator().manual_seed(recipe.seed)
    prefix = f"[{name}] " if name else ""

    def criterion(logits: torch.Tensor, y: torch.Tensor, *mask: torch.Tensor) -> torch.Tensor:
        return cell_loss(logits, y, *mask, label_smoothing=recipe.label_smoothing)

    for epoch in range(state.start_epoch, recipe.epochs):
        head_only = epoch < recipe.head_epochs
        set_phase(tail, head_only)
        if recipe.reseed_each_epoch:
            # A resumed run draws the same batches from this epoch on.
            generator.manual_seed(recipe.seed * 1000 + epoch)
        perm = torch.randperm(len(train_idx), generator=generator)
        view = torch.randint(len(train.views), (len(perm),), generator=generator)
        order = train_idx[perm]
        train_loss, train_acc = train_one_epoch(
            tail,
            criterion,
            state.optimizer,
            (train.take(order[s : s + bs], view[s : s + bs]) for s in range(0, len(order), bs)),
            (len(order) + bs - 1) // bs,
            device,
            epoch,
            scaler,
            recipe.print_freq,
        )
        row: dict[str, Any] = {
            "epoch": epoch,
            "phase": "head" if head_only else "finetune",
            "train_loss": train_loss,
            "train_acc": train_acc,
        }
        if len(val_idx):
            val_loss, val_acc, _, _ = evaluate_cells(
                tail, val, val_idx, device, batch_size=recipe.eval_batch_size, known=known
            )
            if not head_only:
                state.scheduler.step(val_loss)
            row |= {"val_loss": val_loss, "val_acc": val_acc}
            key = (val_acc, -val_loss)
            if key > state.best_key:
                state.best_key, state.best_epoch = key, epoch
                state.best_state = copy.deepcopy(model.state_dict())
                state.since_best = 0
            else:
                state.since_best += 1
        lr = state.optimizer.param_groups[0]["lr"]
        row |= {"lr": lr, "seconds": time.time() - t_start}
        state.history.append(row)
        scores = ""
        if "val_loss" in row:
            scores = f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        print(
            f"{prefix}epoch {epoch} done: train loss {train_loss:.4f} acc {train_acc:.4f}"
            f"{scores} | lr {lr:.2e} | best {state.best_key[0]:.4f} @ {state.best_epoch} | "
            f"{time.time() - t_start:.0f}s",
            flush=True,
        )
        if after_epoch is not None:
            after_epoch(state)
        if len(val_idx) and not head_only and state.since_best >= recipe.patience:
            stop = f"no val improvement for {state.since_best} epochs"
            print(f"{prefix}early stop: {stop}", flush=True)
            break
    return state


def fit_temperature_over(
    logits: torch.Tensor, labels: torch.Tensor, known: torch.Tensor | None = None
) -> float:
    """The temperature that minimises the val NLL (`ml.metrics.fit_temperature`), over the
    known classes only when given (the others' logits are -inf and take no part)."""
    if known is None:
        return fit_temperature(logits, labels)
    cols = torch.nonzero(known).flatten()
    remap = torch.full((len(known),), -1, dtype=torch.long)
    remap[cols] = torch.arange(len(cols))
    return fit_temperature(logits[:, cols], remap[labels])
