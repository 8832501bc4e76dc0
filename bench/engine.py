"""Engine benchmark: eager fp32 against the CPU engines of ml.engine, on held-out real images.

    .venv/bin/python -m bench --json OUT --only engine   # this part alone

The held-out images are the validation split `ml.train` made for the checkpoint (replayed from
the recipe stored in it: val_fraction, seed), so no engine is scored on images the model learnt.
Int8 engines are calibrated on training images of the same split. Every engine runs in this one
process with the same intra-op threads, over the same pre-decoded tensors, at the same batch
size (the last batch padded with blank images, so that there is one input shape: inductor would
compile a second time for a short batch); each one's warm-up call is part of its build time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from bench.data import Sample, stratified_subset, training_split
from bench.machine import metered
from bench.report import BASELINE_ENGINE, EngineRun
from ml.checkpoint import read_metadata
from ml.engine import available_engines, optimise_for_cpu
from ml.inference import Classifier


@dataclass(frozen=True)
class HeldOut:
    """Pre-decoded held-out batches with labels, and calibration images."""

    batches: list[torch.Tensor]
    labels: torch.Tensor
    calibration: torch.Tensor
    description: dict[str, Any]


def load_held_out(
    classifier: Classifier,
    model_path: Path,
    data: Path,
    *,
    batch_size: int,
    val_limit: int,
    calibration_count: int,
) -> HeldOut:
    recipe = read_metadata(model_path).recipe
    split = training_split(data, recipe)
    classes = sorted({label for _, label in split.train + split.val})
    if classes != [c.lower() for c in classifier.classes]:
        raise ValueError(f"{data} has classes {classes}, the model {classifier.classes}")
    val = stratified_subset(split.val, val_limit)
    calibration = stratified_subset(split.train, calibration_count, seed=1)
    return HeldOut(
        batches=[
            _padded(_decode(classifier, val[i : i + batch_size]), batch_size)
            for i in range(0, len(val), batch_size)
        ],
        labels=torch.tensor([classes.index(label) for _, label in val]),
        calibration=_decode(classifier, calibration),
        description={
            "data": str(data),
            "recipe_val_fraction": recipe.get("val_fraction"),
            "recipe_seed": recipe.get("seed"),
            "val_images_in_split": len(split.val),
            "val_images_used": len(val),
            "val_subset": "all" if len(val) == len(split.val) else "stratified subset",
            "calibration_images": len(calibration),
            "calibration_from": "training split, stratified",
        },
    )


def run_engines(
    classifier: Classifier,
    held_out: HeldOut,
    *,
    engines: Sequence[str],
    threads: int,
) -> tuple[list[EngineRun], dict[str, str]]:
    """Time and score each engine; the baseline (eager) runs first. Returns (runs, skipped)."""
    torch.set_num_threads(threads)
    wanted = [BASELINE_ENGINE, *(e for e in engines if e != BASELINE_ENGINE)]
    available = set(available_engines())
    runs: list[EngineRun] = []
    skipped: dict[str, str] = {}
    baseline_predictions: torch.Tensor | None = None
    for name in wanted:
        if name not in available:
            skipped[name] = "not installed here (pip install onnxruntime onnx)"
            continue
        print(f"engine {name}...", flush=True)
        try:
            run, predictions = _run_engine(
                name, classifier, held_out, threads=threads, baseline=baseline_predictions
            )
        except Exception as exc:  # one engine failing (a compiler missing) must not stop the rest
            if name == BASELINE_ENGINE:
                raise
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"[:500]
            continue
        if baseline_predictions is None:
            baseline_predictions = predictions
        runs.append(run)
        print(
            f"  {run.images_per_second:.1f} images/s, accuracy {run.accuracy:.4f}, "
            f"build {run.build_seconds:.1f}s",
            flush=True,
        )
    return runs, skipped


def _run_engine(
    name: str,
    classifier: Classifier,
    held_out: HeldOut,
    *,
    threads: int,
    baseline: torch.Tensor | None,
) -> tuple[EngineRun, torch.Tensor]:
    start = time.perf_counter()
    module = optimise_for_cpu(
        classifier.model,
        input_size=classifier.input_size,
        engine=name,
        calibration=held_out.calibration,
        threads=threads,
    )
    with torch.inference_mode():
        # The first call compiles (inductor) or sizes buffers: a cost paid once per process.
        module(torch.zeros_like(held_out.batches[0]))
    build_seconds = time.perf_counter() - start
    cpu: dict[str, float] = {}
    with metered(cpu):
        batch_seconds, padded_predictions = _timed_pass(module, held_out.batches)
    predictions = padded_predictions[: len(held_out.labels)]
    correct = int((predictions == held_out.labels).sum())
    agree = len(predictions) if baseline is None else int((predictions == baseline).sum())
    run = EngineRun(
        engine=name,
        threads=threads,
        batch_size=len(held_out.batches[0]),
        images=len(predictions),
        timed_images=len(padded_predictions),
        batch_seconds=batch_seconds,
        build_seconds=build_seconds,
        correct=correct,
        agree_with_baseline=agree,
        cpu=cpu,
    )
    return run, predictions


@torch.inference_mode()
def _timed_pass(
    module: nn.Module, batches: Sequence[torch.Tensor]
) -> tuple[list[float], torch.Tensor]:
    seconds = []
    predictions = []
    for batch in batches:
        start = time.perf_counter()
        logits = module(batch)
        seconds.append(time.perf_counter() - start)
        predictions.append(logits.argmax(dim=1))
    return seconds, torch.cat(predictions)


def _padded(batch: torch.Tensor, size: int) -> torch.Tensor:
    if len(batch) == size:
        return batch
    blank = torch.zeros((size - len(batch), *batch.shape[1:]), dtype=batch.dtype)
    return torch.cat([batch, blank])


def _decode(classifier: Classifier, samples: Sequence[Sample]) -> torch.Tensor:
    images = []
    for path, _ in samples:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return classifier.preprocess(images)
