"""Do ml.train and ml.crosscheck give the numbers they gave before a change to their fit loop?

    python -m bench.fit_equivalence --before ef72897 \
        --json bench/results/2026-12-07-fit-equivalence.json

Four small fits on synthetic pictures (seconds each, one thread, CPU): `ml.train` from random
weights, `ml.train --init` fine-tuning that model on a second folder, `ml.crosscheck` (two labs,
every fold and the adaptation curve) and `ml.crosscheck --head-only`. Each runs twice, as a
subprocess: with the code of commit --before (`git archive` into a temporary folder) and with
this working tree, on the same pictures. The written checkpoints are compared tensor by tensor
(`torch.equal`), and every number the runs report (metrics JSON, crosscheck report) that both
versions write is compared for equality; keys only one version writes are listed apart. Timings
(seconds, train_seconds) and the run's own paths are not compared.

    python -m bench.fit_equivalence --before ef72897 --shipped-recipe ../shared/data \
        --weights ../shared/weights/mobilenet_v2_imagenet1k.pth \
        --json bench/results/2026-12-07-fit-equivalence-shipped-recipe.json

instead runs the shipped multi-source model's command (ml/weights/README.md, model card of
`wbc-mobilenetv2.pt`) on real cells, reduced to fit a busy 2-core machine: SHIPPED_LIMITS cells
of PBC and BCCD (the Kaggle source is left out: listing it groups all 9,957 frames, minutes)
and SHIPPED_REDUCED's options (fewer epochs, a shorter adaptation curve, one thread).

Each version builds its own activation cache. A crosscheck that finds its whole cache on disk
starts its fits from another global RNG state (the cache re-seeds torch per chunk; dropout
then draws from it) than one that computes the last chunk itself, with the old code as with
the new: two versions sharing one cache do not compare (tried: the fits differed from the
first epoch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
# Keys whose values differ from run to run by nature, not by the fit.
NOT_COMPARED = {"seconds", "train_seconds", "cache_dir", "json", "out", "data", "init", "source"}
SHIPPED_LIMITS = {"pbc": 200, "bccd": 100}
SHIPPED_REDUCED = ["--epochs", "4", "--adapt-n", "0", "10", "--adapt-epochs", "2"]
SHIPPED_REDUCED += ["--adapt-seeds", "1", "--threads", "1"]
COLOURS = {"alpha": (200, 60, 60), "beta": (60, 200, 60), "gamma": (60, 60, 200)}


def lab_folder(root: Path, classes: list[str], *, tint: int, n: int) -> Path:
    """root/<class>/*.png: a class is a colour, each lab tints its pictures its own way."""
    rng = np.random.default_rng(tint)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            base = np.array(COLOURS[c]) + tint
            pixels = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def runs(data: Path, out: Path) -> dict[str, tuple[list[str], Path, Path]]:
    """name -> (argv after `python -m`, checkpoint written, figures JSON written)."""
    one, two = data / "one", data / "two"
    common = ["--weights", "none", "--input-size", "32", "--threads", "1", "--batch-size", "8"]
    train = ["ml.train", "--data", str(one), "--out", str(out / "train.pt"), *common]
    train += ["--resize", "crop", "--views", "2", "--epochs", "5", "--head-epochs", "1"]
    train += ["--label-smoothing", "0.1", "--val-fraction", "0.25", "--workers", "0"]
    init = ["ml.train", "--init", str(out / "train.pt"), "--data", str(two)]
    init += ["--out", str(out / "init.pt"), *common, "--views", "2", "--epochs", "4"]
    init += ["--head-epochs", "1", "--val-fraction", "0.25", "--workers", "0"]
    cross = ["ml.crosscheck", "--source", f"one:labone:folder:{one}"]
    cross += ["--source", f"two:labtwo:folder:{two}", *common, "--resize", "crop"]
    cross += ["--epochs", "5", "--head-epochs", "1", "--val-fraction", "0.25", "--chunk", "16"]
    cross += ["--adapt-lab", "labone", "--adapt-n", "0", "2", "--adapt-seeds", "2"]
    cross += ["--guard-batches", "2", "--patience", "2"]
    probe = [*cross, "--head-only", "--head-epochs", "0"]
    cross_out = ["--cache-dir", str(out / "cache-c"), "--json", str(out / "c.json")]
    probe_out = ["--cache-dir", str(out / "cache-p"), "--json", str(out / "p.json")]
    return {
        "train": (train, out / "train.pt", out / "train.metrics.json"),
        "train --init": (init, out / "init.pt", out / "init.metrics.json"),
        "crosscheck": (
            [*cross, *cross_out, "--out", str(out / "c.pt")],
            out / "c.pt",
            out / "c.json",
        ),
        "crosscheck --head-only": (
            [*probe, *probe_out, "--out", str(out / "p.pt")],
            out / "p.pt",
            out / "p.json",
        ),
    }


def shipped_recipe_run(data: Path, weights: str, out: Path, cache: Path) -> dict[str, Any]:
    """The shipped wbc-mobilenetv2.pt's command (its model card), reduced (SHIPPED_*)."""
    limits = SHIPPED_LIMITS
    argv = ["ml.crosscheck"]
    argv += ["--source", f"pbc:pbc:folder:{data / 'pbc/dev'}:{limits['pbc']}"]
    argv += ["--source", f"bccd:bccd:voc:{data / 'bccd'}:{limits['bccd']}"]
    argv += ["--weights", weights, "--input-size", "192", "--trunk-blocks", "10", "--views", "1"]
    argv += ["--epochs", "12", "--head-epochs", "2", "--patience", "3", "--adapt-epochs", "6"]
    argv += ["--adapt-seeds", "2", *SHIPPED_REDUCED, "--cache-dir", str(cache)]
    argv += ["--json", str(out / "c.json"), "--out", str(out / "c.pt")]
    return {"shipped recipe, reduced": (argv, out / "c.pt", out / "c.json")}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.0": leaf}: every leaf of a JSON value, skipping NOT_COMPARED keys."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k not in NOT_COMPARED:
                out |= flatten(v, f"{prefix}{k}.")
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out |= flatten(v, f"{prefix}{i}.")
        return out
    return {prefix.rstrip("."): value}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def compare(before: Path, after: Path, ckpt_before: Path, ckpt_after: Path) -> dict[str, Any]:
    """Tensor-by-tensor and number-by-number comparison of two runs' outputs."""
    old = torch.load(ckpt_before, map_location="cpu", weights_only=True)
    new = torch.load(ckpt_after, map_location="cpu", weights_only=True)
    tensors = old["state_dict"]
    equal = [k for k in tensors if torch.equal(tensors[k], new["state_dict"][k])]
    a = flatten(json.loads(before.read_text()))
    b = flatten(json.loads(after.read_text()))
    shared = sorted(set(a) & set(b))
    differing = [k for k in shared if not same(a[k], b[k])]
    meta = {k: (old[k], new[k]) for k in ("temperature", "threshold") if k in old}
    return {
        "tensors": len(tensors),
        "tensors_identical": len(equal),
        "temperature_and_threshold_identical": all(same(x, y) for x, y in meta.values()),
        "numbers_compared": len(shared),
        "numbers_identical": len(shared) - len(differing),
        "differing": {k: [a[k], b[k]] for k in differing[:20]},
        # Keys one version writes and the other does not, by name (e.g. a history column).
        "only_before": sorted({k.split(".")[-1] for k in set(a) - set(b)}),
        "only_after": sorted({k.split(".")[-1] for k in set(b) - set(a)}),
        "identical": len(equal) == len(tensors) and not differing,
    }


def run_all(tree: Path, todo: dict[str, tuple[list[str], Path, Path]]) -> dict[str, float]:
    """Every run with the code in tree; returns each run's wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    seconds = {}
    for name, (argv, _, _) in todo.items():
        t0 = time.time()
        done = subprocess.run(
            [sys.executable, "-m", *argv], cwd=tree, env=env, capture_output=True, text=True
        )
        if done.returncode:
            raise SystemExit(f"{name} failed with {tree}:\n{done.stdout[-3000:]}{done.stderr}")
        seconds[name] = round(time.time() - t0, 1)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", required=True, help="commit whose code gives the reference")
    p.add_argument("--json", help="write the comparison here")
    p.add_argument("--shipped-recipe", metavar="DATA", help="the shared data folder (see above)")
    p.add_argument("--weights", default="none", help="ImageNet weights, for --shipped-recipe")
    args = p.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", args.before], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="hv-fit-eq-") as tmp:
        root = Path(tmp)
        old_tree = root / "before"
        old_tree.mkdir()
        archive = subprocess.run(
            ["git", "archive", commit, "ml"], cwd=REPO, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
        (root / "a").mkdir()
        (root / "b").mkdir()
        if args.shipped_recipe:
            data = Path(args.shipped_recipe).resolve()
            weights = str(Path(args.weights).resolve()) if args.weights != "none" else "none"
            todo_a = shipped_recipe_run(data, weights, root / "a", root / "a" / "cache")
            todo_b = shipped_recipe_run(data, weights, root / "b", root / "b" / "cache")
        else:
            data = root / "data"
            lab_folder(data / "one", ["alpha", "beta", "gamma"], tint=0, n=12)
            lab_folder(data / "two", ["alpha", "beta"], tint=40, n=12)
            todo_a, todo_b = runs(data, root / "a"), runs(data, root / "b")
        seconds_before = run_all(old_tree, todo_a)
        seconds_after = run_all(REPO, todo_b)
        result: dict[str, Any] = {"before": commit, "runs": {}}
        if args.shipped_recipe:
            result["command"] = ["python", "-m", *todo_b["shipped recipe, reduced"][0]]
        for name, (_, ckpt, figures) in todo_a.items():
            _, ckpt_b, figures_b = todo_b[name]
            result["runs"][name] = {
                **compare(figures, figures_b, ckpt, ckpt_b),
                "seconds_before": seconds_before[name],
                "seconds_after": seconds_after[name],
            }
    result["all_identical"] = all(r["identical"] for r in result["runs"].values())
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
