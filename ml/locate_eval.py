"""Evaluate ml.locate on BCCD fields: white-cell detection and field-level subtype accuracy.

    python -m ml.locate_eval --data ../shared/data/bccd --model ml/weights/kaggle4-mobilenetv2.pt \
        --json var/locate-eval.json
    python -m ml.locate_eval --data ../shared/data/bccd --sweep merge  # tune half only (SWEEPS)

`--data` holds `JPEGImages/*.jpg`, `Annotations/*.xml` (Pascal VOC; objects named `WBC` are the
white cells) and `labels.csv` (`image,wbc_category`). The fields are split into two halves by
blocks of 10 consecutive names (neighbouring fields of one smear stay on one side): `tune` chose
the locator's parameters (`--sweep base`, then `--sweep merge`), `report` did not; figures are
given for both and all.

Detection: a located cell is a true positive when its box overlaps a not yet matched annotated
white cell at IoU >= 0.5 (cells taken largest nucleus first); recall = matched / annotated,
precision = matched / located. Subtype: on fields with exactly one annotated white cell and one
category in labels.csv, the classifier's label of the located cell matched to it (no match:
wrong) against the category; a category the model does not know counts as wrong and is listed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from ml.locate import DEFAULT_PARAMS, LocatedCell, LocateParams, crop_cell, locate

Box = tuple[int, int, int, int]
SPLITS = ("tune", "report")
BLOCK = 10


@dataclass(frozen=True)
class Field:
    name: str  # file stem, e.g. BloodImage_00000
    path: Path
    wbc: list[Box]
    categories: list[str]  # lower-case subtype(s) from labels.csv, may be empty
    split: str


def read_voc_boxes(path: Path, name: str = "WBC") -> list[Box]:
    root = ET.parse(path).getroot()  # noqa: S314 - local, trusted annotation files
    out: list[Box] = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip() != name:
            continue
        bb = obj.find("bndbox")
        assert bb is not None
        x1, y1, x2, y2 = (
            round(float(bb.findtext(k) or 0)) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        out.append((x1, y1, x2, y2))
    return out


def read_categories(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            stem = Path(row["image"]).stem
            out[stem] = [c.strip().lower() for c in row["wbc_category"].split(",") if c.strip()]
    return out


def load_fields(root: Path) -> list[Field]:
    categories = read_categories(root / "labels.csv")
    stems = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    fields = []
    for i, stem in enumerate(stems):
        image = root / "JPEGImages" / f"{stem}.jpg"
        if not image.exists():
            continue
        fields.append(
            Field(
                name=stem,
                path=image,
                wbc=read_voc_boxes(root / "Annotations" / f"{stem}.xml"),
                categories=categories.get(stem, []),
                split=SPLITS[(i // BLOCK) % 2],
            )
        )
    return fields


def iou(a: Sequence[int], b: Sequence[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(
    cells: Sequence[LocatedCell], truth: Sequence[Box], threshold: float = 0.5
) -> list[int | None]:
    """For each located cell (in order), the index of the annotated box it matches, or None."""
    used: set[int] = set()
    out: list[int | None] = []
    for cell in cells:
        best, best_iou = None, threshold
        for j, box in enumerate(truth):
            v = iou(cell.box, box)
            if j not in used and v >= best_iou:
                best, best_iou = j, v
        if best is not None:
            used.add(best)
        out.append(best)
    return out


def detection_figures(
    fields: Sequence[Field], located: dict[str, list[LocatedCell]]
) -> dict[str, Any]:
    tp = fp = annotated = 0
    ious: list[float] = []
    false_pos: list[dict[str, Any]] = []
    missed: list[dict[str, Any]] = []
    for field in fields:
        cells = located[field.name]
        pairs = match(cells, field.wbc)
        annotated += len(field.wbc)
        for cell, j in zip(cells, pairs, strict=True):
            if j is None:
                fp += 1
                best = max((iou(cell.box, b) for b in field.wbc), default=0.0)
                false_pos.append(
                    {"image": field.name, "box": list(cell.box), "best_iou": round(best, 3)}
                )
            else:
                tp += 1
                ious.append(iou(cell.box, field.wbc[j]))
        hit = {j for j in pairs if j is not None}
        missed += [
            {"image": field.name, "box": list(b)} for j, b in enumerate(field.wbc) if j not in hit
        ]
    return {
        "fields": len(fields),
        "annotated": annotated,
        "located": tp + fp,
        "true_positives": tp,
        "recall": tp / annotated if annotated else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "mean_iou_of_matches": sum(ious) / len(ious) if ious else None,
        "false_positives": false_pos,
        "missed": missed,
    }


def subtype_figures(
    fields: Sequence[Field],
    located: dict[str, list[LocatedCell]],
    labels: dict[tuple[str, int], tuple[str, float]],
    classes: Sequence[str],
) -> dict[str, Any]:
    right = n = 0
    confusion: Counter[tuple[str, str]] = Counter()
    unknown: Counter[str] = Counter()
    for field in fields:
        if len(field.wbc) != 1 or len(field.categories) != 1:
            continue
        truth = field.categories[0]
        n += 1
        pairs = match(located[field.name], field.wbc)
        hit = [i for i, j in enumerate(pairs) if j == 0]
        predicted = labels[(field.name, hit[0])][0] if hit else "(not located)"
        confusion[(truth, predicted)] += 1
        if truth not in classes:
            unknown[truth] += 1
        right += predicted == truth
    return {
        "fields": n,
        "accuracy": right / n if n else None,
        "confusion": [
            {"truth": t, "predicted": p, "count": c} for (t, p), c in sorted(confusion.items())
        ],
        "categories_unknown_to_model": dict(unknown),
    }


def locate_all(
    fields: Sequence[Field], params: LocateParams
) -> tuple[dict[str, list[LocatedCell]], float]:
    out: dict[str, list[LocatedCell]] = {}
    seconds = 0.0
    for field in fields:
        with Image.open(field.path) as opened:
            image = opened.convert("RGB")
        start = time.perf_counter()
        out[field.name] = locate(image, params)
        seconds += time.perf_counter() - start
    return out, seconds


def classify_located(
    fields: Sequence[Field],
    located: dict[str, list[LocatedCell]],
    model: Path,
    batch_size: int,
    *,
    crop_min_side: int = 0,
) -> tuple[dict[tuple[str, int], tuple[str, float]], list[str]]:
    from ml.inference import Classifier

    classifier = Classifier.load(model)
    keys: list[tuple[str, int]] = []
    crops: list[Image.Image] = []
    for field in fields:
        cells = located[field.name]
        if not cells:
            continue
        with Image.open(field.path) as opened:
            image = opened.convert("RGB")
        for i, cell in enumerate(cells):
            keys.append((field.name, i))
            crops.append(crop_cell(image, cell.box, min_side=crop_min_side))
    predictions = classifier.predict(crops, batch_size=batch_size)
    return {k: (p.label, p.confidence) for k, p in zip(keys, predictions, strict=True)}, list(
        classifier.classes
    )


# The parameter searches, run in this order on the tune half (docs/MODELS.md): `base` chose the
# stain, area, join and box parameters with the lobe merge off; `merge` then chose the merge's
# (the others at their defaults, box scale again).
SEEN_TAGS = ("validation", "training", "unmatched")


def seen_by_model(
    fields: Sequence[Field],
    copies: Path,
    *,
    val_fraction: float,
    seed: int,
    max_distance: float = 12.0,
) -> dict[str, dict[str, Any]]:
    """Whether a model trained on `copies` (the Kaggle set: augmented copies of BCCD fields,
    one folder per class) with a grouped split (`ml.train --group-by near-duplicate`) saw each
    field's white cell: the split is made again as training made it, and each field (resized to
    the copies' frame size) is matched to its nearest copy by `ml.data.cell_descriptor`.
    `validation`: that copy's cell was in the model's validation side, never trained on;
    `training`: it was trained on; `unmatched`: no copy within `max_distance` (the distance at
    which `near_duplicate_groups` links copies). A field whose cell has no copy at all may
    still match another cell's: the tag is an estimate (`mapping_class_agreement` in the
    report checks it against labels.csv)."""
    import numpy as np

    from ml.data import (
        cell_descriptor,
        file_descriptors,
        grouped_stratified_split,
        list_samples,
        near_duplicate_groups,
    )

    found = list_samples(copies)
    classes = sorted({c for _, c in found})
    paths = [p for p, _ in found]
    labels = [classes.index(c) for _, c in found]
    x = file_descriptors(paths)
    groups = near_duplicate_groups(paths, labels, descriptors=x)
    _, val_idx = grouped_stratified_split(labels, groups, val_fraction, seed)
    in_val = np.zeros(len(paths), dtype=bool)
    in_val[val_idx] = True
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    with Image.open(paths[0]) as first:
        frame = first.size
    out: dict[str, dict[str, Any]] = {}
    for field in fields:
        with Image.open(field.path) as opened:
            img = opened.convert("RGB").resize(frame, Image.Resampling.BILINEAR)
        d = (cell_descriptor(img).astype(np.float64) - mean) / std
        dist = np.sqrt(((z - d) ** 2).sum(axis=1))
        j = int(dist.argmin())
        tag = "unmatched" if dist[j] > max_distance else ("validation" if in_val[j] else "training")
        out[field.name] = {
            "tag": tag,
            "distance": round(float(dist[j]), 3),
            "copy_class": classes[labels[j]].lower(),
        }
    return out


def mapping_class_agreement(fields: Sequence[Field], seen: dict[str, dict[str, Any]]) -> float:
    """Of the matched fields with one category, the share whose nearest copy is filed under it."""
    pairs = [
        (seen[f.name]["copy_class"], f.categories[0])
        for f in fields
        if len(f.categories) == 1 and seen[f.name]["tag"] != "unmatched"
    ]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else 0.0


SWEEPS: dict[str, dict[str, tuple[Any, ...]]] = {
    "base": {
        "stain_threshold": (30.0, 40.0, 50.0),
        "min_nucleus_area": (2400, 3200, 4000),
        "join_distance": (12, 24, 36),
        "box_scale": (1.2, 1.3, 1.4),
        "merge_gap": (0,),
    },
    "merge": {
        "merge_gap": (0, 12, 24, 36),
        "merge_max_side": (200, 215, 230, 245, 260),
        "box_scale": (1.2, 1.3),
    },
}


def sweep(fields: Sequence[Field], grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every combination of `grid` on the given fields, best first (recall + precision, then
    mean IoU of the matches)."""
    images = {}
    for field in fields:
        with Image.open(field.path) as opened:
            images[field.name] = opened.convert("RGB")
    rows = []
    for values in itertools.product(*grid.values()):
        changes: dict[str, Any] = dict(zip(grid, values, strict=True))
        params = replace(DEFAULT_PARAMS, **changes)
        located = {f.name: locate(images[f.name], params) for f in fields}
        figures = detection_figures(fields, located)
        rows.append(
            {
                **{k: v for k, v in asdict(params).items() if k in grid},
                "recall": figures["recall"],
                "precision": figures["precision"],
                "mean_iou": figures["mean_iou_of_matches"],
            }
        )
    rows.sort(key=lambda r: (-(r["recall"] + r["precision"]), -(r["mean_iou"] or 0)))
    return rows


def summary_line(name: str, detection: dict[str, Any], subtype: dict[str, Any] | None) -> str:
    def f(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    d = detection
    line = (
        f"{name:6s} fields {d['fields']:3d}  recall {f(d['recall'])} ({d['true_positives']}/"
        f"{d['annotated']})  precision {f(d['precision'])} ({d['true_positives']}/"
        f"{d['located']})  mean IoU {f(d['mean_iou_of_matches'])}"
    )
    if subtype is not None:
        line += f"  subtype {f(subtype['accuracy'])} (n={subtype['fields']})"
    return line


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data", required=True, help="BCCD folder (JPEGImages, Annotations, labels.csv)"
    )
    p.add_argument("--model", help="classifier checkpoint: also measure subtype accuracy")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--crop-min-side",
        type=int,
        default=0,
        help="crops at least this many pixels square (ml.locate.crop_cell's min_side)",
    )
    p.add_argument(
        "--seen-split",
        type=Path,
        metavar="COPIES",
        help="with --model trained on COPIES (the Kaggle TRAIN folder) with a grouped split: "
        "subtype accuracy apart for fields whose cell was in its validation side (unseen), "
        "its training side, or unmatched (seen_by_model)",
    )
    p.add_argument(
        "--sweep",
        choices=sorted(SWEEPS),
        help="grid-search the tune half with this grid (SWEEPS) and print the best rows",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    fields = load_fields(Path(args.data))
    if not fields:
        print(f"no annotated fields in {args.data}", file=sys.stderr)
        return 2
    if args.sweep:
        rows = sweep([f for f in fields if f.split == "tune"], SWEEPS[args.sweep])
        for row in rows[:15]:
            print(json.dumps(row))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
        return 0
    located, seconds = locate_all(fields, DEFAULT_PARAMS)
    report: dict[str, Any] = {
        "params": asdict(DEFAULT_PARAMS),
        "locate_seconds_per_field": seconds / len(fields),
        "detection": {},
    }
    groups = {"all": fields, **{s: [f for f in fields if f.split == s] for s in SPLITS}}
    for name, group in groups.items():
        report["detection"][name] = detection_figures(group, located)
    if args.model:
        labels, classes = classify_located(
            fields, located, Path(args.model), args.batch_size, crop_min_side=args.crop_min_side
        )
        report["model"] = str(args.model)
        report["crop_min_side"] = args.crop_min_side
        report["subtype"] = {
            name: subtype_figures(group, located, labels, classes) for name, group in groups.items()
        }
    for name in groups:
        print(summary_line(name, report["detection"][name], report.get("subtype", {}).get(name)))
    if args.model and args.seen_split:
        from ml.checkpoint import read_metadata

        recipe = read_metadata(args.model).recipe
        val_fraction, seed = float(recipe.get("val_fraction", 0.15)), int(recipe.get("seed", 0))
        seen = seen_by_model(fields, args.seen_split, val_fraction=val_fraction, seed=seed)
        report["seen_split"] = {
            "copies": str(args.seen_split),
            "val_fraction": val_fraction,
            "seed": seed,
            "mapping_class_agreement": mapping_class_agreement(fields, seen),
            "fields": seen,
            "subtype": {
                tag: subtype_figures(
                    [f for f in fields if seen[f.name]["tag"] == tag], located, labels, classes
                )
                for tag in SEEN_TAGS
            },
        }
        for tag in SEEN_TAGS:
            st = report["seen_split"]["subtype"][tag]
            acc = "-" if st["accuracy"] is None else f"{st['accuracy']:.4f}"
            print(f"subtype, cell in the model's {tag:10s}: {acc} (n={st['fields']})")
        agreement = report["seen_split"]["mapping_class_agreement"]
        print(f"(nearest copy's class = labels.csv on {agreement:.4f} of matched fields)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
