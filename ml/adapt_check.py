"""The portal's few-cell adaptation (`ml.adapt.adapt_to_cells`, what the `adapt` worker runs)
through the evaluation of `ml.adapt_study`: the same labs, test cells, pools and reviewed
cells drawn, each adapted checkpoint written, loaded by `ml.inference.Classifier` as a worker
loads it and scored on the lab's test cells. Beside each run, the study's own figures for the
same methods, lab, n and seed (--study-method, repeatable: VARIANT/VIEWS/HEAD of the study).

The wired method (two candidates, 4 views, the better by out-of-fold accuracy kept) against
the second study's two candidate methods:

    nice -n 19 python -m ml.adapt_check --model ml/weights/pbc8-mobilenetv2.pt \\
        --pbc ../shared/data/pbc/dev --kaggle ../shared/data/kaggle-blood-cells/TRAIN \\
        --labs stain yellow bccd --ns 10 25 --bn-from reviewed \\
        --study ml/weights/trials/pbc8-adapt-study-2.json \\
        --study-method bn/4/logistic --study-method reinhard/4/logistic \\
        --json ml/weights/trials/pbc8-adapt-portal-2.json

The first wiring (lab BN, 1 view: `--candidates lab-bn --views identity`) against the first
study (`--study ml/weights/trials/pbc8-adapt-study.json --study-method bn/1/logistic`) gave
ml/weights/trials/pbc8-adapt-portal.json.

The training stain REINHARD normalises towards is the file beside the model
(`ml.adapt.trained_stain`), written by `--write-train-stain`: the pooled statistics of 25
training pictures a class (`fit_subset(train, 25, 0)`), the same the study used.

Two sources of the BatchNorm statistics (--bn-from): `reviewed`, the reviewed cells alone,
as the portal has them (`webportal.pipeline.adaptation`), and `pool`, the study's (200
unlabelled pictures of the lab's pool).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ml.adapt import CANDIDATES, FewCellOptions, adapt_to_cells, trained_stain
from ml.adapt_study import draw_reviewed, kaggle_cells, shift_of, split_lab
from ml.checkpoint import load_ood, sha256_of
from ml.guard import fit_subset, model_split
from ml.inference import Classifier
from ml.sources import Cell
from ml.stain import StainStats
from ml.views import VIEWS

STUDY_METHOD = {"variant": "bn", "views": 1, "head": "logistic"}
# The study's training-stain statistics: 200 pictures, 25 a class of the model's train split.
TRAIN_STAIN_PER_CLASS = 25


def study_method(text: str) -> dict[str, Any]:
    """VARIANT/VIEWS/HEAD (e.g. reinhard/4/logistic) as a study row's keys."""
    variant, views, head = text.split("/")
    return {"variant": variant, "views": int(views), "head": head}


def lab_pictures(lab: str, cells: list[Cell]) -> list[Image.Image]:
    """Every cell's picture as the study's lab shows it (`ml.adapt_study.LabFeatures`)."""
    shift = shift_of(lab)
    out = []
    for i, cell in enumerate(cells):
        img = cell.open().convert("RGB")
        out.append(img if shift is None else shift(img, np.random.default_rng([0, i])))
    return out


def study_figure(
    study: dict[str, Any] | None,
    lab: str,
    n: int,
    seed: int,
    method: dict[str, Any] | None = None,
) -> int | None:
    """The study's test cells right for the same method (default STUDY_METHOD), lab, n and
    seed."""
    for row in (study or {}).get("rows", []):
        same = all(row[k] == v for k, v in (method or STUDY_METHOD).items())
        if same and (row["lab"], row["n"], row["seed"]) == (lab, n, seed):
            return int(row["test_right"])
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    t_start = time.time()
    study = json.loads(Path(args.study).read_text()) if args.study else None
    base = Classifier.load(args.model, device="cpu", accelerate=False)
    classes = list(base.classes)
    ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
    _, val = model_split(
        argparse.Namespace(data=args.pbc, extra_train=None), dict(ckpt.get("recipe", {}))
    )
    options = FewCellOptions(candidates=tuple(args.candidates), views=tuple(args.views))
    methods = [study_method(m) for m in args.study_method] or [STUDY_METHOD]
    train_stain = trained_stain(args.model)
    report: dict[str, Any] = {
        "command": "python -m ml.adapt_check " + " ".join(sys.argv[1:]),
        "model": str(args.model),
        "model_sha256": sha256_of(args.model),
        "options": options.to_dict(),
        "study": args.study,
        "study_methods": methods,
        "train_stain": None if train_stain is None else train_stain.to_dict(),
        "runs": [],
    }
    for lab in args.labs:
        cells = (
            kaggle_cells(Path(args.kaggle), classes)
            if lab == "bccd"
            else fit_subset(val, args.per_class, args.split_seed)
        )
        test, pool = split_lab(cells, args.split_seed)
        pictures = lab_pictures(lab, cells)
        step = max(1, len(pool) // args.stats_cells)
        stats_idx = list(pool)[::step][: args.stats_cells]
        test_y = [cells[i].label for i in test]
        for n in args.ns:
            for seed in args.seeds:
                reviewed, drawn = draw_reviewed(cells, pool, n, seed)
                for bn_from in args.bn_from:
                    t_run = time.time()
                    with tempfile.TemporaryDirectory() as tmp:
                        out = Path(tmp) / "adapted.pt"
                        metrics = adapt_to_cells(
                            init=args.model,
                            pictures=[pictures[i] for i in reviewed],
                            labels=[cells[i].label for i in reviewed],
                            out=out,
                            options=options,
                            bn_pictures=[pictures[i] for i in stats_idx]
                            if bn_from == "pool"
                            else None,
                        )
                        clf = Classifier.load(out, device="cpu", accelerate=False)
                        has_guard = load_ood(out) is not None
                    t_predict = time.time()
                    predictions = clf.predict([pictures[i] for i in test], batch_size=32)
                    predict_seconds = time.time() - t_predict
                    right = [p.label == y for p, y in zip(predictions, test_y, strict=True)]
                    accepted = [p.confidence >= (clf.threshold or 0.0) for p in predictions]
                    row = {
                        "lab": lab,
                        "n": n,
                        "seed": seed,
                        "bn_from": bn_from,
                        "drawn": drawn,
                        "test_cells": len(test),
                        "test_right": int(sum(right)),
                        "accuracy": sum(right) / len(test),
                        "chosen": metrics["chosen"],
                        "chosen_because": metrics["chosen_because"],
                        "candidates": metrics["candidates"],
                        "skipped": metrics["skipped"],
                        "views": list(clf.views),
                        "study_test_right": study_figure(study, lab, n, seed, methods[0]),
                        "study": {
                            "/".join(str(m[k]) for k in ("variant", "views", "head")): (
                                study_figure(study, lab, n, seed, m)
                            )
                            for m in methods
                        },
                        "checkpoint_threshold": clf.threshold,
                        "auto_accept": metrics["auto_accept"],
                        "auto_accepted_test_cells": int(sum(accepted)),
                        "guard": metrics["guard"],
                        "has_guard": has_guard,
                        "temperature": metrics["temperature"],
                        "reviewed_oof": metrics["reviewed_oof"],
                        "adapt_seconds": metrics["train_seconds"],
                        "predict_seconds": round(predict_seconds, 2),
                        "seconds": round(time.time() - t_run, 1),
                    }
                    report["runs"].append(row)
                    print(
                        f"{lab} n={n} seed={seed} bn={bn_from}: {row['test_right']}/{len(test)}"
                        f" ({row['chosen']}; study {row['study']}), {row['seconds']}s",
                        flush=True,
                    )
                    _write(report, args.json)
    report["summary"] = summarise(report["runs"])
    report["seconds"] = round(time.time() - t_start, 1)
    _write(report, args.json)
    return report


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per lab, n and BN source: mean accuracy over seeds, and the study's mean."""
    keys = sorted({(r["lab"], r["n"], r["bn_from"]) for r in runs})
    out = []
    for lab, n, bn_from in keys:
        rs = [r for r in runs if (r["lab"], r["n"], r["bn_from"]) == (lab, n, bn_from)]
        study = [r["study_test_right"] / r["test_cells"] for r in rs if r["study_test_right"]]
        by_method: dict[str, float | None] = {}
        for name in rs[0].get("study", {}):
            got = [r["study"][name] / r["test_cells"] for r in rs if r["study"].get(name)]
            by_method[name] = float(np.mean(got)) if len(got) == len(rs) else None
        chosen = [str(r["chosen"]) for r in rs if r.get("chosen")]
        out.append(
            {
                "lab": lab,
                "n": n,
                "bn_from": bn_from,
                "runs": len(rs),
                "accuracy": float(np.mean([r["accuracy"] for r in rs])),
                "accuracy_min": float(min(r["accuracy"] for r in rs)),
                "accuracy_max": float(max(r["accuracy"] for r in rs)),
                "study_accuracy": float(np.mean(study)) if len(study) == len(rs) else None,
                "study_accuracy_by_method": by_method,
                "chosen": {c: chosen.count(c) for c in sorted(set(chosen))},
                "runs_with_threshold": sum(r["auto_accept"]["threshold"] is not None for r in rs),
                "auto_accepted_test_cells": sum(r["auto_accepted_test_cells"] for r in rs),
                "runs_with_guard": sum(r["has_guard"] for r in rs),
            }
        )
    return out


def _write(report: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1) + "\n")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="ml/weights/pbc8-mobilenetv2.pt")
    p.add_argument("--pbc", default="../shared/data/pbc/dev", help="the model's --data folder")
    p.add_argument("--kaggle", default="../shared/data/kaggle-blood-cells/TRAIN")
    p.add_argument("--labs", nargs="+", default=["stain", "bccd"])
    p.add_argument("--ns", type=int, nargs="+", default=[10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--bn-from", nargs="+", default=["reviewed", "pool"], choices=["reviewed", "pool"]
    )
    p.add_argument("--per-class", type=int, default=72, help="PBC val cells a class (shifts)")
    p.add_argument("--stats-cells", type=int, default=200, help="pool pictures (--bn-from pool)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--study", help="ml.adapt_study's result JSON, for its figures beside ours")
    p.add_argument(
        "--study-method",
        action="append",
        default=[],
        help="VARIANT/VIEWS/HEAD of the study's rows to put beside each run (repeatable; "
        "default bn/1/logistic)",
    )
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    p.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS)
    p.add_argument(
        "--write-train-stain",
        metavar="PATH",
        help="write the model's training stain (ml.adapt.trained_stain's file) and stop",
    )
    p.add_argument(
        "--views-cost",
        type=int,
        metavar="CELLS",
        help="time the inference of 1 against 4 views on CELLS of the model's val cells "
        "(eager and ort-fp32 where installed; --json) and stop",
    )
    p.add_argument("--repeats", type=int, default=3, help="with --views-cost: best of")
    p.add_argument("--json")
    p.add_argument("--threads", type=int, default=1)
    return p


def views_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of `Classifier.predict_logits` with the picture alone and with all of VIEWS,
    on the same preprocessed val cells (batches of 32, the worker's chunk), per engine; the
    two alternate, best of --repeats, after a warm-up."""
    from ml.engine import available_engines, optimise_for_cpu

    torch.set_num_threads(args.threads)
    clf = Classifier.load(args.model, device="cpu", accelerate=False)
    ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
    _, val = model_split(
        argparse.Namespace(data=args.pbc, extra_train=None), dict(ckpt.get("recipe", {}))
    )
    cells = fit_subset(val, -(-args.views_cost // len(clf.classes)), 0)[: args.views_cost]
    batch = clf.preprocess([c.open() for c in cells])
    chunks = [batch[s : s + 32] for s in range(0, len(batch), 32)]
    engines = ["eager"] + [e for e in ("ort-fp32",) if e in available_engines()]
    report: dict[str, Any] = {
        "command": "python -m ml.adapt_check " + " ".join(sys.argv[1:]),
        "model": str(args.model),
        "cells": len(batch),
        "threads": args.threads,
        "repeats": args.repeats,
        "engines": {},
    }
    for engine in engines:
        clf.model = optimise_for_cpu(clf.eager, input_size=clf.input_size, engine=engine)
        best = {"1": float("inf"), str(len(VIEWS)): float("inf")}
        for views in ((("identity",)), VIEWS):
            clf.views = tuple(views)
            clf.predict_logits(chunks[0])  # the first call of a shape allocates
        for _ in range(args.repeats):
            for views in ((("identity",)), VIEWS):
                clf.views = tuple(views)
                t0 = time.perf_counter()
                for chunk in chunks:
                    clf.predict_logits(chunk)
                key = str(len(views))
                best[key] = min(best[key], time.perf_counter() - t0)
        rates = {k: len(batch) / v for k, v in best.items()}
        report["engines"][engine] = {
            "images_per_second": rates,
            "four_views_cost": rates["1"] / rates[str(len(VIEWS))],
        }
        print(engine, json.dumps(report["engines"][engine]), flush=True)
    _write(report, args.json)
    return report


def write_train_stain(args: argparse.Namespace) -> dict[str, Any]:
    """The training stain as the study took it (25 pictures a class of the model's train
    split), with the command that made it."""
    ckpt = torch.load(args.model, map_location="cpu", weights_only=True)
    train, _ = model_split(
        argparse.Namespace(data=args.pbc, extra_train=None), dict(ckpt.get("recipe", {}))
    )
    chosen = fit_subset(train, TRAIN_STAIN_PER_CLASS, 0)
    stats = StainStats.of(c.open() for c in chosen)
    out = {
        **stats.to_dict(),
        "pictures": len(chosen),
        "model_sha256": sha256_of(args.model),
        "command": "python -m ml.adapt_check " + " ".join(sys.argv[1:]),
    }
    _write(out, args.write_train_stain)
    return out


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.write_train_stain:
        print(json.dumps(write_train_stain(args)))
        return
    if args.views_cost:
        views_cost(args)
        return
    report = run(args)
    for s in report["summary"]:
        print(json.dumps(s))


if __name__ == "__main__":
    main()
