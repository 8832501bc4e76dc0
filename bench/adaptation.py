"""How long a lab's adaptation takes, and what it changes, on cells of a lab the model never saw.

    python -m bench.adaptation --model ml/weights/pbc8-mobilenetv2.pt \\
        --source ../shared/data/kaggle-blood-cells/TRAIN \\
        --groups var/crosscheck/source-5501bf8eb1c1.json \\
        --train-per-class 12 --heldout-per-class 8 --json var/bench-adaptation.json

A folder of --source (one sub-folder per class) stands for a lab's reviewed cells: a few cells
per class to train on and other cells held out, laid out as the portal's export lays them out
(`<class>/<id>.png`, class names as the model spells them). With --groups the files are
augmented copies of fewer source cells (the Kaggle set, about 35 copies of each of ~350 cells),
grouped as `ml.crosscheck` grouped them (its --cache-dir/source-*.json: path, label, group per
file; `ml.data.near_duplicate_groups`): one copy of each cell is used and no cell is on both
sides, as the portal keeps a case on one side. Then exactly
what the adaptation worker runs after its export (webportal.pipeline.adaptation): ml.train.fine_tune
with the portal's recipe (ADAPT_TRAIN_OPTIONS, the pool's --workers 0 and thread count), and
ml.evaluate of the base and the adapted model on the held-out folder. Prints JSON: seconds for
the fine-tune and each evaluation, and both models' held-out figures. One seed; the selection of
cells is seeded too (--seed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ml.data import list_samples
from ml.inference import Classifier


def lab_folders(
    source: Path,
    out: Path,
    *,
    classes: list[str],
    train_per_class: int,
    heldout_per_class: int,
    groups: dict[str, str],
    seed: int,
) -> dict[str, dict[str, int]]:
    """Copy cells of `source` into out/train and out/heldout; the counts per class."""
    by_lower = {c.lower(): c for c in classes}
    cells: dict[str, dict[str, Path]] = defaultdict(dict)  # class -> cell key -> one file
    for path, folder in list_samples(source):
        if folder not in by_lower:
            continue
        key = groups.get(f"{folder}/{path.name}", path.stem)
        cells[by_lower[folder]].setdefault(key, path)
    rng = random.Random(seed)  # a reproducible selection
    counts: dict[str, dict[str, int]] = {"train": {}, "heldout": {}}
    for label, found in sorted(cells.items()):
        keys = sorted(found)
        rng.shuffle(keys)
        sides = {
            "train": keys[:train_per_class],
            "heldout": keys[train_per_class : train_per_class + heldout_per_class],
        }
        for side, chosen in sides.items():
            target = out / side / label
            target.mkdir(parents=True, exist_ok=True)
            for key in chosen:
                name = key.replace(":", "-").replace("/", "-")
                shutil.copyfile(found[key], target / f"{name}{found[key].suffix.lower()}")
            counts[side][label] = len(chosen)
    return counts


def _groups(path: Path | None) -> dict[str, str]:
    """'<class folder, lower case>/<file name>' -> source cell, from ml.crosscheck's cache."""
    if path is None:
        return {}
    rows = json.loads(path.read_text())
    return {
        f"{Path(r['path']).parent.name.lower()}/{Path(r['path']).name}": r["group"] for r in rows
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the base checkpoint")
    p.add_argument("--source", type=Path, required=True, help="a folder of another lab's cells")
    p.add_argument(
        "--groups", type=Path, help="ml.crosscheck's source cache: the source cell of each file"
    )
    p.add_argument("--train-per-class", type=int, default=30)
    p.add_argument("--heldout-per-class", type=int, default=15)
    p.add_argument("--options", help="ml.train options instead of the portal's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webportal.settings")
    import django

    django.setup()
    from ml.evaluate import evaluate_folder
    from ml.train import fine_tune
    from webportal.pipeline.adaptation import figures_of, train_options

    options = train_options(args.options)
    base = Classifier.load(args.model)
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        counts = lab_folders(
            args.source,
            work,
            classes=list(base.classes),
            train_per_class=args.train_per_class,
            heldout_per_class=args.heldout_per_class,
            groups=_groups(args.groups),
            seed=args.seed,
        )
        t0 = time.perf_counter()
        out = work / "adapted.pt"
        fine_tune(init=args.model, data=work / "train", out=out, options=options)
        fine_tune_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        base_figures = figures_of(evaluate_folder(base, work / "heldout", workers=0))
        base_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        adapted = Classifier.load(out)
        adapted_figures = figures_of(evaluate_folder(adapted, work / "heldout", workers=0))
        adapted_seconds = time.perf_counter() - t0
    report = {
        "model": str(args.model),
        "source": str(args.source),
        "cells": counts,
        "options": options,
        "seed": args.seed,
        "fine_tune_seconds": round(fine_tune_seconds, 1),
        "evaluate_seconds": {"base": round(base_seconds, 1), "adapted": round(adapted_seconds, 1)},
        "base": base_figures,
        "adapted": adapted_figures,
        "cpus": len(os.sched_getaffinity(0)),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
