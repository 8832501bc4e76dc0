"""Two workers side by side: what two cores give the raw model and the worker's job.

    .venv/bin/python -m bench.side_by_side --json var/side.json [--images 512] [--repeats 2]

`python -m bench`'s `two_vs_one_worker` compares whole systems; this says where the shortfall
from 2.0 lies. For one and then two processes at once (spawned, one intra-op thread each, the
worker's engine as `INFERENCE_ENGINE=auto` picks it, started together at a barrier), on the same
`--images` real cells split between them:

- `raw`: forward passes alone (`predict_logits`, chunks of 32 decoded beforehand): what the
  machine allows two processes, with nothing else running. `raw_two_vs_one` is the ceiling
  for `two_vs_one_worker`.
- `job`: the worker's job (`batch_job.process_batch`, in the process, no Celery), each process
  on its own batch of one shared SQLite database, with batch_job's stage timings
  (`recording_stages`), the CPU time of the forward passes' thread and of the whole process.
  `job_two_vs_one`: its images/s with two over one.

Every run is in the JSON with `other_cores` (bench/machine.py); the fastest of each setting
counts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.data import pipeline_images
from bench.machine import machine_info, metered

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "ml" / "weights" / "pbc8-mobilenetv2.pt"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pbc" / "dev"
CHUNK = 32


def _engine_classifier(model: Path, check_paths: Sequence[Path]) -> Any:
    """The classifier on the engine the worker would pick, one intra-op thread."""
    import torch

    from ml.engine import choose_engine
    from ml.inference import Classifier

    torch.set_num_threads(1)
    classifier = Classifier.load(model, device="cpu")
    check = classifier.preprocess([_open_rgb(p) for p in check_paths])
    choice = choose_engine(
        classifier.eager, input_size=classifier.input_size, check=check, wanted="auto", threads=1
    )
    classifier.model, classifier.engine = choice.model, choice.name
    return classifier


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _raw(model: Path, paths: list[Path], start: Any, results: Any) -> None:
    """A child: forward passes on pre-decoded chunks of `paths`, timed from the barrier."""
    classifier = _engine_classifier(model, paths[:8])
    chunks = [
        classifier.preprocess([_open_rgb(p) for p in paths[i : i + CHUNK]])
        for i in range(0, len(paths), CHUNK)
    ]
    classifier.warm_up(CHUNK)
    start.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for chunk in chunks:
        classifier.predict_logits(chunk)
    results.put(
        {
            "images": len(paths),
            "engine": classifier.engine,
            "seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu,
        }
    )


def _job(env: dict[str, str], batch_id: int, start: Any, results: Any) -> None:
    """A child: batch_job.process_batch on `batch_id` in this process, stages timed."""
    os.environ.update(env)
    import django
    import torch

    torch.set_num_threads(1)
    django.setup()
    from webportal.cases.models import Batch
    from webportal.pipeline import batch_job, classifiers

    model_version = Batch.objects.select_related("model_version").get(pk=batch_id).model_version
    classifier = classifiers.load_classifier(model_version=model_version)
    classifier.warm_up(CHUNK)
    stages: dict[str, float] = defaultdict(float)
    lock = threading.Lock()
    forward_cpu = [0.0]
    predict = classifier.predict_logits

    def timed_predict(batch: Any) -> Any:
        before = time.thread_time()
        try:
            return predict(batch)
        finally:
            forward_cpu[0] += time.thread_time() - before

    classifier.predict_logits = timed_predict  # type: ignore[method-assign]

    def record(stage: str, seconds: float) -> None:
        with lock:
            stages[stage] += seconds

    start.wait()
    with batch_job.recording_stages(record):
        wall, cpu = time.perf_counter(), time.process_time()
        outcome = batch_job.process_batch(batch_id=batch_id)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    results.put(
        {
            "batch_id": batch_id,
            "images": outcome.classified,
            "status": str(outcome.status),
            "engine": classifier.engine,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "forward_thread_cpu_seconds": forward_cpu[0],
            "stage_seconds": dict(stages),
        }
    )


def _side_by_side(target: Any, args_per_process: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Start one spawned process per argument tuple, release them together, collect."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(args_per_process) + 1)
    results = context.Queue()
    processes = [
        context.Process(target=target, args=(*args, start, results)) for args in args_per_process
    ]
    for process in processes:
        process.start()
    usage: dict[str, float] = {}
    start.wait(timeout=600)
    with metered(usage, groups=()):
        wall = time.perf_counter()
        each = [results.get(timeout=600) for _ in processes]
        wall = time.perf_counter() - wall
    for process in processes:
        process.join(timeout=60)
    images = sum(int(run["images"]) for run in each)
    return {
        "processes": len(processes),
        "images": images,
        "seconds": wall,
        "images_per_second": images / wall,
        "each": each,
        "cpu": usage,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.side_by_side",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--json", required=True, type=Path, help="write the report here")
    p.add_argument("--images", type=int, default=512, help="real cells, split between processes")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint (ml.train)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class folders")
    p.add_argument("--repeats", type=int, default=2)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = get_args_parser().parse_args(argv)
    if args.images < 2:
        raise SystemExit("--images must be at least 2 (two processes split them)")
    from bench import pipeline

    samples = pipeline_images(args.data, args.images)
    paths = [path for path, _ in samples]
    started = time.time()
    runs: dict[str, list[dict[str, Any]]] = {"raw_1": [], "raw_2": [], "job_1": [], "job_2": []}
    with tempfile.TemporaryDirectory(prefix="hv-bench-side-") as temp:
        system = pipeline.setup_system(Path(temp), args.model)
        from webportal.cases.models import Case

        case = Case.objects.get(pk=system.case_id)
        for repeat in range(args.repeats):
            for n in (1, 2):
                print(f"run {repeat + 1}: raw model, {n} process(es)...", flush=True)
                parts = [paths[i::n] for i in range(n)]
                runs[f"raw_{n}"].append(_side_by_side(_raw, [(args.model, part) for part in parts]))
                print(f"run {repeat + 1}: the worker's job, {n} process(es)...", flush=True)
                batches = [
                    pipeline._submit(case, pipeline.upload_files(samples[i::n])).pk
                    for i in range(n)
                ]
                runs[f"job_{n}"].append(
                    _side_by_side(_job, [(system.env, batch) for batch in batches])
                )
    best = {
        name: max(found, key=lambda run: float(run["images_per_second"]))
        for name, found in runs.items()
    }
    report = {
        "summary": {
            "raw_two_vs_one": best["raw_2"]["images_per_second"]
            / best["raw_1"]["images_per_second"],
            "job_two_vs_one": best["job_2"]["images_per_second"]
            / best["job_1"]["images_per_second"],
            **{f"{name}_images_per_second": run["images_per_second"] for name, run in best.items()},
            "max_other_cores_in_used_runs": max(run["cpu"]["other_cores"] for run in best.values()),
        },
        "runs": runs,
        "config": {
            "model": str(args.model),
            "data": str(args.data),
            "images": args.images,
            "chunk": CHUNK,
            "threads": 1,
            "repeats": args.repeats,
            "command": " ".join(sys.argv),
            "seconds": round(time.time() - started, 1),
        },
        "machine": machine_info(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    for key, value in report["summary"].items():
        print(f"{key}: {value:.2f}")
    return report


if __name__ == "__main__":
    main()
