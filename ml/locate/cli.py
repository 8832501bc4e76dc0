"""The command line of ml.locate: locate, crop and classify the white cells of every field.

    python -m ml.locate --model ml/weights/kaggle4-mobilenetv2.pt --images DIR --json OUT.json

(the output format is in ml/locate/__init__.py's docstring). Apart from the locator itself so
that the portal can import ml.locate without PyTorch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ml.inference import Classifier
from ml.locate import DEFAULT_PARAMS, IMAGE_SUFFIXES, LocateParams, crop_cell, list_images, locate


def locate_folder(
    paths: Iterable[Path],
    model: str | Path,
    *,
    params: LocateParams = DEFAULT_PARAMS,
    batch_size: int = 32,
) -> list[dict[str, Any]]:
    """The JSON contract's entries for `paths`: locate, crop, classify (crops batched)."""
    classifier = Classifier.load(model)
    results: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], Image.Image]] = []

    def flush() -> None:
        predictions = classifier.predict([crop for _, crop in pending], batch_size=batch_size)
        for (entry, _), pred in zip(pending, predictions, strict=True):
            entry["label"] = pred.label
            entry["confidence"] = round(pred.confidence, 6)
        pending.clear()

    for path in paths:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        cells = []
        for cell in locate(image, params):
            entry: dict[str, Any] = {"box": list(cell.box), "cut_by_border": cell.cut_by_border}
            cells.append(entry)
            pending.append((entry, crop_cell(image, cell.box)))
        results.append({"image": path.name, "cells": cells})
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    # The contract's key order: box, label, confidence (then extras).
    for result in results:
        result["cells"] = [
            {
                "box": c["box"],
                "label": c["label"],
                "confidence": c["confidence"],
                "cut_by_border": c["cut_by_border"],
            }
            for c in result["cells"]
        ]
    return results


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ml.locate",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--model", required=True, help="classifier checkpoint (ml/weights/*.pt)")
    p.add_argument("--images", required=True, help="folder of field images")
    p.add_argument("--json", required=True, help="write the results here ('-': stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not Path(args.images).is_dir():
        print(f"{args.images} is not a folder", file=sys.stderr)
        return 2
    if not Path(args.model).is_file():
        print(f"no checkpoint at {args.model}", file=sys.stderr)
        return 2
    paths = list_images(args.images)
    if not paths:
        print(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.images}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = locate_folder(paths, args.model, batch_size=args.batch_size)
    elapsed = time.perf_counter() - start
    text = json.dumps(results, indent=1)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n")
    cells = sum(len(r["cells"]) for r in results)
    print(f"{len(results)} images, {cells} white cells, {elapsed:.1f} s", file=sys.stderr)
    return 0
