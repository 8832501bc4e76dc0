"""Evaluate a checkpoint on a folder with one sub-folder per class.

    python -m ml.evaluate --model ml/weights/pbc8-mobilenetv2.pt --data DIR --json OUT.json

Folder names are matched to the model's classes case-insensitively; images in a folder that
matches no class count as wrong and the folder is reported. Prints the report and writes the
JSON (keys: n, accuracy, macro_f1, per_class, confusion, ece, threshold, coverage,
accuracy_above_threshold, images_per_second, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ml.data import ImageList, list_samples
from ml.inference import Classifier, read_ahead
from ml.metrics import coverage_curve, format_report, summarize
from ml.plots import plot_coverage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint written by ml.train")
    p.add_argument("--data", required=True, help="folder with one sub-folder per class")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding processes (0: in-process); default 0 on <= 2 CPUs, else 2",
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--coverage-png", help="also draw the coverage/accuracy curve here")
    return p


def default_workers() -> int:
    """Decoding processes worth starting: none on <= 2 CPUs.

    Measured on 2 cores (docs/MODELS.md, "Evaluation speed"): decoding costs ~10% of the
    forward pass, and worker processes competing with the model's 2 threads made evaluation
    slower (2 workers: 80% of the raw model's speed).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else 2


def evaluate_folder(
    clf: Classifier, data: str | Path, *, batch_size: int = 64, workers: int | None = None
) -> dict[str, Any]:
    if workers is None:
        workers = default_workers()
    found = list_samples(data)
    known = {c.lower(): i for i, c in enumerate(clf.classes)}
    unknown = sorted({c for _, c in found if c not in known})
    index = {**known, **{c: len(clf.classes) + k for k, c in enumerate(unknown)}}
    dataset = ImageList([(p, index[c]) for p, c in found], clf.transform)
    # The next batches are decoded while the model runs on this one: by DataLoader worker
    # processes, or, on a GPU with none, by one thread (both release the GIL). On a CPU without
    # workers the model's threads already fill the cores: a decoding thread measured no faster
    # (docs/MODELS.md, "Evaluation speed").
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]] = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=clf.device.type == "cuda",
    )
    if workers == 0 and clf.device.type == "cuda":
        loader = read_ahead(loader)
    clf.warm_up(batch_size)  # the first call allocates; images/s is the steady rate
    probs, labels = [], []
    t0 = time.perf_counter()
    for batch, targets in loader:
        probs.append(torch.softmax(clf.predict_logits(batch), dim=1).cpu())
        labels.append(targets)
    elapsed = time.perf_counter() - t0
    n_cls = len(clf.classes)
    p = torch.cat(probs).numpy() if probs else torch.zeros(0, n_cls).numpy()
    y = torch.cat(labels).numpy() if labels else torch.zeros(0, dtype=torch.long).numpy()
    report = summarize(p, y, clf.classes, clf.threshold, extra_labels=unknown)
    report["images_per_second"] = len(y) / elapsed if elapsed > 0 else 0.0
    report["coverage_curve"] = (
        coverage_curve(p.max(axis=1), p.argmax(axis=1) == y) if len(y) else []
    )
    report["unmatched_folders"] = unknown
    report["model_classes"] = list(clf.classes)
    return report


def main(args: argparse.Namespace) -> dict[str, Any]:
    clf = Classifier.load(args.model, device=args.device)
    report = evaluate_folder(clf, args.data, batch_size=args.batch_size, workers=args.workers)
    report["model"] = str(args.model)
    report["data"] = str(args.data)
    print(format_report(report))
    print(f"{report['images_per_second']:.1f} images/s on {clf.device}")
    if report["unmatched_folders"]:
        print(f"folders with no matching class (counted wrong): {report['unmatched_folders']}")
    if args.coverage_png:
        plot_coverage(report["coverage_curve"], args.coverage_png, threshold=clf.threshold)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
