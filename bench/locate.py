"""Locating white cells in whole fields: fields per second, alone and with classification.

    .venv/bin/python -m bench.locate --json var/bench-locate.json [--wait-quiet 300]

Fields: the first `--fields` JPEGs (sorted) of `--data` (default `../shared/data/bccd/JPEGImages`,
640x480). Every setting runs `--repeats` times in turn; the fastest run of each counts (other
processes can only slow a run down), and every run is kept in the JSON with the cores other
processes used meanwhile (`other_cores`, bench/machine.py).

- `locate_1_process`: decode the JPEG, `ml.locate.locate`, one process.
- `locate_2_processes`: the same, the fields split over two processes (a pool started and
  warmed before the clock): what two cores give (contract: >= 20 fields/s).
- `locate_classify_raw`: decode, locate, crop and classify every cell with `--model`, in one
  process with one intra-op thread (as one worker runs), the crops of `--chunk` fields per
  forward pass, on the engine the worker picks (ml.engine.choose_engine, "auto"); fields/s and
  cells/s. The portal's worker is compared with this figure. `locate_classify_raw_eager`: the
  same with the eager model.
- `worker` (with `--worker`): the same fields uploaded as one batch of whole fields to a fresh
  portal (SQLite, filesystem broker, media in a temp folder: bench.pipeline.setup_system) and
  worked by one real Celery worker process (one intra-op thread, model loaded and warmed before
  the clock); fields/s from the message queued (the upload's commit) to the batch done.
  `worker_vs_raw` = its fields/s over the raw locate+classify figure (target >= 0.90).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.machine import machine_info, metered, wait_for_quiet
from ml.checkpoint import sha256_of
from ml.engine import choose_engine
from ml.inference import Classifier
from ml.locate import crop_cell, list_images, locate

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bccd" / "JPEGImages"
DEFAULT_MODEL = REPO / "ml" / "weights" / "kaggle4-mobilenetv2.pt"


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def locate_files(paths: Sequence[Path]) -> tuple[int, float]:
    """Decode and locate every field: (white cells found, CPU seconds this process spent)."""
    start = time.process_time()
    cells = sum(len(locate(_open_rgb(p))) for p in paths)
    return cells, time.process_time() - start


def _pool_init() -> None:
    torch.set_num_threads(1)


def time_locate(paths: Sequence[Path], processes: int, pool: Any = None) -> dict[str, Any]:
    usage: dict[str, float] = {}
    with metered(usage, groups=()):
        start = time.perf_counter()
        if processes == 1:
            cells, cpu_seconds = locate_files(paths)
        else:
            parts = pool.map(locate_files, [paths[i::processes] for i in range(processes)])
            cells, cpu_seconds = sum(c for c, _ in parts), sum(t for _, t in parts)
        seconds = time.perf_counter() - start
    return {
        "processes": processes,
        "fields": len(paths),
        "cells": cells,
        "seconds": seconds,
        "fields_per_second": len(paths) / seconds,
        "cpu_seconds": cpu_seconds,
        "fields_per_cpu_second": len(paths) / cpu_seconds,
        "cpu": usage,
    }


def time_locate_classify(
    classifier: Classifier, paths: Sequence[Path], chunk: int
) -> dict[str, Any]:
    torch.set_num_threads(1)
    usage: dict[str, float] = {}
    cells = 0
    with metered(usage):
        cpu_start = time.process_time()
        start = time.perf_counter()
        for s in range(0, len(paths), chunk):
            crops = []
            for path in paths[s : s + chunk]:
                image = _open_rgb(path)
                crops += [crop_cell(image, c.box) for c in locate(image)]
            if crops:
                classifier.predict_tensor(classifier.preprocess(crops))
            cells += len(crops)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    return {
        "threads": 1,
        "chunk_fields": chunk,
        "fields": len(paths),
        "cells": cells,
        "seconds": seconds,
        "fields_per_second": len(paths) / seconds,
        "cells_per_second": cells / seconds,
        "cpu_seconds": cpu_seconds,
        "fields_per_cpu_second": len(paths) / cpu_seconds,
        "cpu": usage,
    }


def time_worker(system: Any, paths: Sequence[Path]) -> dict[str, Any]:
    """One batch of `paths` as whole fields through one real worker process (see above)."""
    from bench import pipeline
    from webportal.cases import services
    from webportal.cases.models import Batch, Case, Cell

    case = Case.objects.get(pk=system.case_id)
    files = [(p.name, io.BytesIO(p.read_bytes())) for p in paths]  # read before the clock
    usage: dict[str, float] = {}
    with (
        pipeline.running_workers(system, 1) as workers,
        metered(usage, [w.pid for w in workers]),
    ):
        start = time.time()
        batch = services.submit_batch(
            case=case, created_by=None, files=files, image_kind=Batch.ImageKind.FIELD
        )
        queued = time.time()  # the commit has sent the message
        pipeline._wait_until_done([batch.pk])
    batch.refresh_from_db()
    assert batch.finished_at is not None
    seconds = batch.finished_at.timestamp() - queued
    cells = Cell.objects.filter(image__batch=batch).count()
    return {
        "batch_id": batch.pk,
        "fields": batch.total_images,
        "cells": cells,
        "upload_seconds": queued - start,
        "seconds": seconds,
        "fields_per_second": batch.total_images / seconds,
        "cells_per_second": cells / seconds,
        "cpu": usage,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.locate",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--json", required=True, type=Path, help="write the report here")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of field images")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="classifier checkpoint")
    p.add_argument("--fields", type=int, default=200, help="fields per run")
    p.add_argument("--chunk", type=int, default=32, help="fields per classify chunk")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--worker", action="store_true", help="also time the portal's real worker")
    p.add_argument("--workdir", type=Path, help="keep the portal's files here (default: temp)")
    return p


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda r: float(r["fields_per_second"]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    paths = list_images(args.data)[: args.fields]
    if len(paths) < 2:
        raise SystemExit(f"{args.data} has fewer than 2 images")
    machine = machine_info()
    if args.wait_quiet > 0:
        machine["wait_for_quiet"] = wait_for_quiet(args.wait_quiet)
    runs: dict[str, list[dict[str, Any]]] = {
        "locate_1_process": [],
        "locate_2_processes": [],
        "locate_classify_raw": [],
    }
    system = None
    temp = tempfile.TemporaryDirectory(prefix="hv-bench-locate-")
    if args.worker:
        from bench import pipeline

        # Before anything imports Django: the settings are read once.
        system = pipeline.setup_system(args.workdir or Path(temp.name), args.model)
        runs["worker"] = []
    # The pool forks before this process starts torch's thread pools (forking after can hang).
    context = multiprocessing.get_context("fork")
    with context.Pool(2, initializer=_pool_init) as pool:
        pool.map(locate_files, [paths[:2], paths[2:4]])  # imports and first calls, unclocked
        eager = Classifier.load(args.model, device="cpu")
        torch.set_num_threads(1)
        # The raw figure runs the engine the worker runs (INFERENCE_ENGINE=auto, checked on
        # a few crops as the worker checks it); eager is timed beside it.
        with Image.open(paths[0]) as first:
            field = first.convert("RGB")
        check = eager.preprocess([crop_cell(field, c.box) for c in locate(field)] or [field])
        choice = choose_engine(eager.eager, input_size=eager.input_size, check=check, wanted="auto")
        classifier = Classifier.load(args.model, device="cpu")
        classifier.model, classifier.engine = choice.model, choice.name
        classifier.warm_up(args.chunk)
        eager.warm_up(args.chunk)
        runs["locate_classify_raw_eager"] = []
        for repeat in range(args.repeats):
            print(f"run {repeat + 1} of {args.repeats}...", flush=True)
            runs["locate_1_process"].append(time_locate(paths, 1))
            runs["locate_2_processes"].append(time_locate(paths, 2, pool))
            runs["locate_classify_raw"].append(time_locate_classify(classifier, paths, args.chunk))
            runs["locate_classify_raw_eager"].append(time_locate_classify(eager, paths, args.chunk))
            if system is not None:
                runs["worker"].append(time_worker(system, paths))
    temp.cleanup()
    summary = {name: best(r) for name, r in runs.items()}
    report = {
        "summary": {
            "locate_fields_per_second_1_process": summary["locate_1_process"]["fields_per_second"],
            "locate_fields_per_second_2_processes": summary["locate_2_processes"][
                "fields_per_second"
            ],
            "locate_classify_raw_fields_per_second": summary["locate_classify_raw"][
                "fields_per_second"
            ],
            "locate_classify_raw_cells_per_second": summary["locate_classify_raw"][
                "cells_per_second"
            ],
            "locate_classify_raw_eager_fields_per_second": summary["locate_classify_raw_eager"][
                "fields_per_second"
            ],
            # Load-independent: CPU time per field, whatever else ran. Two cores at this rate.
            "locate_fields_per_cpu_second": max(
                r["fields_per_cpu_second"] for r in runs["locate_1_process"]
            ),
            "locate_classify_fields_per_cpu_second": max(
                r["fields_per_cpu_second"] for r in runs["locate_classify_raw"]
            ),
            **(
                {
                    "worker_fields_per_second": summary["worker"]["fields_per_second"],
                    "worker_vs_raw": summary["worker"]["fields_per_second"]
                    / summary["locate_classify_raw"]["fields_per_second"],
                }
                if "worker" in summary
                else {}
            ),
            "max_other_cores_in_used_runs": max(r["cpu"]["other_cores"] for r in summary.values()),
        },
        "runs": runs,
        "config": {
            "data": str(args.data),
            "fields": len(paths),
            "model": str(args.model),
            "model_sha256": sha256_of(args.model),
            "chunk_fields": args.chunk,
            "engine": classifier.engine,
            "repeats": args.repeats,
            "command": " ".join(sys.argv),
        },
        "machine": machine,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    for key, value in report["summary"].items():
        print(f"{key}: {value:.2f}")
    return report


if __name__ == "__main__":
    main()
