"""Checkpoints side by side, end to end, on the val cells of every source of a crosscheck split.

    python -m ml.source_compare \
        --source pbc:pbc:folder:../shared/data/pbc/dev \
        --source kaggle:bccd:copies:../shared/data/kaggle-blood-cells/TRAIN:1400 \
        --source bccd:bccd:voc:../shared/data/bccd \
        --model ml/weights/pbc8-mobilenetv2.pt --model ml/weights/wbc-mobilenetv2.pt \
        --cache-dir var/crosscheck --json var/source-compare.json

The sources, --val-fraction and --seed must be the crosscheck's (`ml.crosscheck`): the split is
rebuilt with its own functions, so the val cells are the ones its all-labs model was
early-stopped on and never trained on. Each model classifies every val cell the way a worker
does (`ml.inference.Classifier`, the picture or its box crop, fp32 eager on the CPU); a
prediction of a class the source does not label counts as wrong. Per model and source: cells,
accuracy, and the share auto-accepted at the checkpoint's own threshold with the accuracy of
those cells.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.crosscheck import load_cells, split_cells
from ml.inference import Classifier
from ml.sources import SourceSpec


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", action="append", required=True, help="NAME:LAB:KIND:PATH[:LIMIT]")
    p.add_argument("--model", action="append", required=True, help="a checkpoint (repeat)")
    p.add_argument("--cache-dir", required=True, help="the crosscheck's (its source lists)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    return p


def compare(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    specs = [SourceSpec.parse(s) for s in args.source]
    cells = load_cells(args, specs)
    classes = sorted({c.label for c in cells})
    is_val = split_cells(cells, classes, args.val_fraction, args.seed)
    report: dict[str, Any] = {"command": vars(args), "models": {}}
    for path in args.model:
        t0 = time.time()
        clf = Classifier.load(path, device="cpu", accelerate=False)
        rows: dict[str, Any] = {}
        for spec in specs:
            val = [c for c, v in zip(cells, is_val, strict=True) if v and c.source == spec.name]
            preds = []
            for s in range(0, len(val), args.batch_size):
                preds += clf.predict([c.open() for c in val[s : s + args.batch_size]])
            right = np.array(
                [p.label.lower() == c.label.lower() for p, c in zip(preds, val, strict=True)]
            )
            conf = np.array([p.confidence for p in preds])
            # A checkpoint with no threshold auto-accepts nothing.
            accepted = conf >= clf.threshold if clf.threshold is not None else conf > 1.0
            rows[spec.name] = {
                "lab": spec.lab,
                "cells": len(val),
                "accuracy": float(right.mean()) if len(val) else None,
                "threshold": clf.threshold,
                "auto_accepted": float(accepted.mean()) if len(val) else None,
                "accuracy_auto_accepted": float(right[accepted].mean()) if accepted.any() else None,
            }
        report["models"][Path(path).name] = {"sources": rows, "seconds": round(time.time() - t0)}
        print(Path(path).name, json.dumps(rows), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    compare(get_args_parser().parse_args())
