"""Batched cell classification from a self-describing checkpoint (used by the portal's workers).

clf = Classifier.load("ml/weights/pbc8-mobilenetv2.pt")
preds = clf.predict([PIL.Image.open("cell.jpg")])
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import Compose

from ml.checkpoint import IDENTITY_ONLY, load_checkpoint, load_ood
from ml.ood import OODGuard, odd_cells
from ml.stain import StainStats, reinhard
from ml.transforms import eval_geometry, eval_transform, geometry_key, to_input_tensor
from ml.views import check_views, view_batch


@dataclass(frozen=True)
class BatchCheck:
    """The batch guard's verdict on a batch of cells (`ml.ood`)."""

    score: float  # mean out-of-distribution score of the cells checked
    threshold: float | None  # flag above this (None: batch too small to judge)
    flagged: bool  # True: these cells are unlike anything the model was validated on
    cells_checked: int
    # The calibrated batch size whose threshold was used (None with no threshold).
    threshold_size: int | None = None
    # Each checked cell's own score, in the order checked, and the guard's per-cell limit (its
    # size-1 threshold, None without one): one odd cell in a normal batch is above it.
    cell_scores: tuple[float, ...] = ()
    cell_threshold: float | None = None

    @property
    def odd_cells(self) -> list[int]:
        """The checked cells (positions in cell_scores) above the per-cell limit: each is held
        for review whatever the batch's verdict (`ml.ood.odd_cells`)."""
        return odd_cells(self.cell_scores, self.cell_threshold)


# A faster engine's guard features differ from eager's by float rounding only; one whose cell
# scores move by more than this (relative to the score, or absolute below 1) on the check
# cells is not used for the guard.
MAX_GUARD_SCORE_CHANGE = 1e-3


class StainNormalise:
    """A picture's colours moved from a lab's stain to the training stain (`ml.stain.reinhard`),
    as a transform step before ToTensor."""

    def __init__(self, source: StainStats, target: StainStats) -> None:
        self.source, self.target = source, target

    def __call__(self, img: Image.Image) -> Image.Image:
        return reinhard(img, source=self.source, target=self.target)


class PooledFeatures(nn.Module):
    """A model's `features` trunk and the global average pool: the classifier's input, which
    the batch guard (ml.ood) models; with `taps` (a guard's `OODGuard.taps`), followed by each
    tapped block's per-channel mean and standard deviation over the picture."""

    def __init__(self, features: nn.Module, taps: Sequence[int] = ()) -> None:
        super().__init__()
        self.features = features
        self.taps = tuple(sorted(taps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.taps:
            return nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        stats = []
        for i, block in enumerate(self.features.children()):
            x = block(x)
            if i in self.taps:
                stats.append(torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1))
        pooled = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.cat([pooled, *stats], dim=1)


@dataclass(frozen=True)
class CellPrediction:
    label: str
    confidence: float  # max calibrated probability
    probabilities: dict[str, float]  # class -> probability, all classes


class Classifier:
    def __init__(
        self,
        model: nn.Module,
        *,
        classes: Sequence[str],
        arch: str,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        temperature: float = 1.0,
        threshold: float | None = None,
        device: torch.device | None = None,
        resize: str = "crop",
        accelerate: bool | None = None,
        ood: OODGuard | None = None,
        views: Sequence[str] = IDENTITY_ONLY,
        stain: tuple[StainStats, StainStats] | None = None,
    ) -> None:
        """views: the test-time views whose logits `predict_logits` averages (`ml.views`);
        stain: (source, target) Reinhard statistics every picture is normalised by before the
        network sees it (None: the picture as is)."""
        self.classes = list(classes)
        self._ood = ood
        self.arch = arch
        self.input_size = input_size
        self.temperature = temperature
        self.threshold = threshold
        self.device = device or torch.device("cpu")
        self.resize = resize
        self._mean_std = (list(mean), list(std))
        self.fit_to_input = eval_geometry(input_size, resize)
        self.views = check_views(views)
        self.stain = stain  # sets transform and to_input
        # Normalize's operands as torchvision makes them (float32), shaped for a batch.
        self._mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.geometry = geometry_key(input_size, resize)
        self.model = model.to(self.device).eval()
        # The model as built, kept for the guard's features even if `model` is later swapped for
        # a faster engine that only returns logits (ml.engine).
        self.eager = self.model
        # Which engine `model` is (ml.engine names): "eager" until a faster one is swapped in.
        self.engine = "eager"
        # The guard's features: the model as built until use_feature_engine swaps in a faster
        # engine that gives the same scores.
        self.feature_model: nn.Module = PooledFeatures(
            self.eager.get_submodule("features"), taps=ood.taps if ood is not None else ()
        )
        self.feature_engine = "eager"
        # The GPU path: channels-last memory and reduced-precision autocast. On by default on
        # CUDA only (on a CPU it gains nothing); forcing it on a CPU tests the same code path.
        self.accelerate = self.device.type == "cuda" if accelerate is None else accelerate
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        if self.accelerate:
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def stain(self) -> tuple[StainStats, StainStats] | None:
        """(source, target) Reinhard statistics applied to every picture, or None."""
        return self._stain

    @stain.setter
    def stain(self, stain: tuple[StainStats, StainStats] | None) -> None:
        # Every way into the network goes through these two (and to_input_batch, which reads
        # the stain itself): per picture (explain, evaluate's DataLoader) and per batch.
        self._stain = stain
        mean, std = self._mean_std
        if stain is None:
            self.to_input = to_input_tensor(mean, std)
            self.transform = eval_transform(self.input_size, mean, std, self.resize)
        else:
            self.to_input = Compose([StainNormalise(*stain), to_input_tensor(mean, std)])
            self.transform = Compose([self.fit_to_input, self.to_input])

    @property
    def ood(self) -> OODGuard | None:
        """The batch guard (None: the checkpoint has none)."""
        return self._ood

    @ood.setter
    def ood(self, guard: OODGuard | None) -> None:
        # Another guard may read other blocks: its features start on the model as built.
        self._ood = guard
        taps = guard.taps if guard is not None else ()
        self.feature_model = PooledFeatures(self.eager.get_submodule("features"), taps=taps)
        self.feature_engine = "eager"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        accelerate: bool | None = None,
    ) -> Classifier:
        """Load a checkpoint onto `device` (default: CUDA if available, else CPU)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, meta = load_checkpoint(path)
        return cls(
            model,
            classes=meta.classes,
            arch=meta.arch,
            input_size=meta.input_size,
            mean=meta.mean,
            std=meta.std,
            temperature=meta.temperature,
            threshold=meta.threshold,
            device=torch.device(device),
            resize=meta.resize,
            accelerate=accelerate,
            ood=load_ood(path),
            views=meta.views,
            stain=None
            if meta.stain_source is None or meta.stain_target is None
            else (meta.stain_source, meta.stain_target),
        )

    @torch.inference_mode()
    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated logits (divided by the temperature) for a normalised N x 3 x S x S batch,
        averaged over the checkpoint's views (`ml.views.view_batch`). The views are turned
        here, on the batch, so every engine swapped into `model` runs them (one call on the
        V x N stacked batch); the classifier is linear on the pooled features, so the mean of
        the logits is the logit of the mean features that `ml.adapt` fitted the head for."""
        x = batch.to(self.device, non_blocking=True)
        n, views = len(x), len(self.views)
        if self.views != IDENTITY_ONLY:
            x = torch.cat([view_batch(x, name) for name in self.views])
        if self.accelerate:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.accelerate):
            logits = self.model(x)
        out: torch.Tensor = logits.float()
        if self.views != IDENTITY_ONLY:
            out = out.view(views, n, -1).mean(0)
        return out / self.temperature

    @torch.inference_mode()
    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """The guard's features of a normalised batch: pooled penultimate features (the
        classifier's input), then those of the guard's tapped blocks if it has any, from the
        model as built (`features` then `classifier`: mobilenet_v2, efficientnet_lite0), or
        the faster engine of use_feature_engine.

        The picture as given, one view: the guard is fitted on the identity view of the
        preprocessed (so, with a checkpoint's stain, stain-normalised) cells (`ml.adapt`,
        `ml.train`), whatever views the classifier averages."""
        out: torch.Tensor = self.feature_model(batch.to(self.device).float())
        return out.float().cpu()

    def use_feature_engine(self, engine: str, *, check: torch.Tensor) -> str | None:
        """Compute the guard's features with `engine` (ml.engine, CPU) from now on, if the
        guard's cell scores of `check` (a preprocessed batch of real cells) stay within
        MAX_GUARD_SCORE_CHANGE of eager's. Returns why not (the features stay eager), or None.

        The check costs the worker a second forward pass over some cells per batch; on a CPU
        eager is several times slower than the engine that classifies (bench.batch_check).
        """
        from ml.engine import optimise_for_cpu  # ONNX Runtime and the exporter, only if asked

        if self.ood is None:
            return "the checkpoint has no batch guard"
        reference = PooledFeatures(self.eager.get_submodule("features"), taps=self.ood.taps)
        try:
            fast = optimise_for_cpu(reference, input_size=self.input_size, engine=engine)
        except (ImportError, RuntimeError, ValueError) as exc:
            return f"{engine} could not be built: {exc}"
        with torch.inference_mode():
            want = self.ood.cell_scores(reference(check.float()).float())
            got = self.ood.cell_scores(fast(check.float()).float())
        change = float(((got - want).abs() / want.abs().clamp_min(1.0)).max())
        if change > MAX_GUARD_SCORE_CHANGE:
            return f"{engine} moved a guard score by {change:.1g} (limit {MAX_GUARD_SCORE_CHANGE})"
        self.feature_model, self.feature_engine = fast, engine
        return None

    def check_batch(self, batch: torch.Tensor, *, max_cells: int = 100) -> BatchCheck | None:
        """The batch guard's verdict on the cells of a batch made by `preprocess` (None when the
        checkpoint has no guard). At most max_cells cells, evenly spaced, are checked: the
        guard's thresholds are calibrated for batches of 20 and 100 cells, and each checked cell
        costs a forward pass."""
        if self.ood is None or len(batch) == 0:
            return None
        step = max(1, -(-len(batch) // max_cells))
        feats = self.embed(batch[::step])
        cells = self.ood.cell_scores(feats)
        score = float(cells.mean())
        threshold = self.ood.threshold_for(len(feats))
        return BatchCheck(
            score=score,
            threshold=threshold,
            flagged=threshold is not None and score > threshold,
            cells_checked=len(feats),
            threshold_size=self.ood.calibrated_size_for(len(feats)),
            cell_scores=tuple(float(v) for v in cells),
            cell_threshold=self.ood.thresholds.get(1),
        )

    def warm_up(self, batch_size: int) -> None:
        """One forward pass on a blank batch: the first call allocates (about a second on a
        CPU), and a worker should pay that when it starts, not on a lab's first batch."""
        size = self.input_size
        self.predict_logits(torch.zeros(batch_size, 3, size, size))

    def preprocess(
        self, images: Sequence[Image.Image], *, fitted: Sequence[bool] | None = None
    ) -> torch.Tensor:
        """The N x 3 x S x S input batch for `images` (safe to run in another thread).

        fitted[i] says images[i] went through fit_to_input already (the portal's stored copy):
        it then only becomes a tensor.
        """
        flags = fitted if fitted is not None else [False] * len(images)
        squares = [
            img.convert("RGB") if done else self.fit_to_input(img.convert("RGB"))
            for img, done in zip(images, flags, strict=True)
        ]
        return self.to_input_batch(squares)

    def to_input_batch(self, squares: Sequence[Image.Image]) -> torch.Tensor:
        """The N x 3 x S x S batch of RGB images already fitted to the input square.

        The same values as `to_input` (the checkpoint's stain normalisation, if any, then
        torchvision's ToTensor then Normalize) image by image,
        bit for bit (the same float32 operations, element by element), in four vectorised
        passes over the whole batch instead of several small ones per image.
        """
        size = (self.input_size, self.input_size)
        if not squares:
            return torch.empty(0, 3, *size)
        for img in squares:
            if img.size != size or img.mode != "RGB":
                raise ValueError(f"not fitted to the input: {img.mode} {img.size}, want RGB {size}")
        if self._stain is not None:
            source, target = self._stain
            squares = [reinhard(img, source=source, target=target) for img in squares]
        pixels = torch.from_numpy(np.stack([np.asarray(img) for img in squares]))
        batch = pixels.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
        return batch.div_(255).sub_(self._mean).div_(self._std)

    def predict_tensor(self, batch: torch.Tensor) -> list[CellPrediction]:
        """Predictions for a batch made by `preprocess`, in one forward pass."""
        return self.predictions_from_logits(self.predict_logits(batch))

    def predictions_from_logits(self, logits: torch.Tensor) -> list[CellPrediction]:
        """Label, confidence and probabilities per row of calibrated logits."""
        probs = torch.softmax(logits, dim=1).cpu()
        out: list[CellPrediction] = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                CellPrediction(
                    label=self.classes[best],
                    confidence=row[best],
                    probabilities=dict(zip(self.classes, row, strict=True)),
                )
            )
        return out

    def predict(
        self, images: Sequence[Image.Image], *, batch_size: int = 64
    ) -> list[CellPrediction]:
        out: list[CellPrediction] = []
        for s in range(0, len(images), batch_size):
            out.extend(self.predict_tensor(self.preprocess(images[s : s + batch_size])))
        return out


T = TypeVar("T")


def read_ahead(items: Iterable[T]) -> Iterator[T]:
    """Yield items in order while a thread already produces the next one.

    For decoding the next batch while the model runs on this one (both release the GIL). The
    iteration runs in that thread: items must not touch thread-bound state such as a Django
    database connection.
    """
    iterator = iter(items)
    done = object()  # not None: an item may be None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
        upcoming = pool.submit(next, iterator, done)
        while (item := upcoming.result()) is not done:
            upcoming = pool.submit(next, iterator, done)
            yield cast(T, item)
