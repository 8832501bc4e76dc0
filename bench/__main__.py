"""Run the benchmarks in one run, print the figures and ratios, write them as JSON.

    .venv/bin/python -m bench --json var/bench.json [--images 512] [--model PATH] [--data DIR]
    .venv/bin/python -m bench --json var/upload.json --only upload [--upload-images 500]
    .venv/bin/python -m bench --json var/shards.json --only shards [--shard-cells 2000]
    .venv/bin/python -m bench --json var/fair.json --only fair_share [--fair-big-cells 10000]

Pipeline: the raw model in-process (the worker's engine, and eager fp32 as the baseline)
against the whole system (upload, filesystem broker, real celery workers, SQLite) on --images
real cells, with one worker and with two. Upload (bench/upload_speed.py): held-out cells
uploaded through the API of a running portal, against one worker's speed in the same run, and
--report-images cells from upload to report with one worker and with two. Shards
(bench/shards.py): one batch of --shard-cells cells to report with one worker and with two.
Fair share (bench/fair_share.py): ten labs at once, one with a large batch. Engine: eager fp32
against the CPU engines of ml.engine on the model's held-out validation images. Details and the
last measured figures: bench/README.md. A full run takes several minutes on two cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import engine as engine_bench
from bench import fair_share, pipeline, shards, upload_speed
from bench.data import Sample, pipeline_images
from bench.machine import machine_info, wait_for_quiet
from bench.report import EngineRun, ModelRun, PipelineRun, build_report, format_summary, write_json
from ml.checkpoint import sha256_of
from ml.engine import ENGINES, choose_engine
from ml.inference import Classifier

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "ml" / "weights" / "pbc8-mobilenetv2.pt"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pbc" / "dev"
# The worker's settings.INFERENCE_CHUNK_SIZE default; read from settings in the system run.
CHUNK_SIZE = 32


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--json", required=True, type=Path, help="write the report here")
    p.add_argument("--images", type=int, default=512, help="real images for the pipeline runs")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint (ml.train)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of class folders")
    p.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma-separated engines of ml.engine to compare with eager (default: all)",
    )
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for the engines")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each raw-model and whole-system setting, alternated; the fastest counts",
    )
    p.add_argument(
        "--val-limit", type=int, default=0, help="stratified subset of the val split (0: all)"
    )
    p.add_argument("--calibration", type=int, default=256, help="training images for int8")
    p.add_argument(
        "--profile-images", type=int, default=128, help="images in the profiled worker batch"
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to leave the CPUs (shared machine)",
    )
    p.add_argument(
        "--only",
        choices=["all", "pipeline", "engine", "upload", "shards", "fair_share"],
        default="all",
        help="all: pipeline, engine and upload; shards and fair_share run only when named",
    )
    p.add_argument(
        "--shard-cells", type=int, default=2000, help="cells in the one sharded batch (shards)"
    )
    p.add_argument(
        "--shard-size",
        type=int,
        help="BATCH_SHARD_IMAGES for shards and fair_share (default: the setting's default)",
    )
    p.add_argument(
        "--fair-big-cells",
        type=int,
        default=10_000,
        help="fair_share: the big lab's routine batch (its rows reuse --fair-unique files)",
    )
    p.add_argument(
        "--fair-unique", type=int, default=500, help="fair_share: distinct cell files stored"
    )
    p.add_argument(
        "--fair-small-cells", type=int, default=20, help="fair_share: each small batch's cells"
    )
    p.add_argument(
        "--fair-labs", type=int, default=10, help="fair_share: labs, the big one included"
    )
    p.add_argument("--fair-workers", type=int, default=2, help="fair_share: workers")
    p.add_argument(
        "--upload-images", type=int, default=500, help="held-out cells in the timed API upload"
    )
    p.add_argument(
        "--report-images",
        type=int,
        default=2000,
        help="cells timed from upload to report, with 1 and 2 workers (0: skip)",
    )
    p.add_argument(
        "--upload-threads",
        type=int,
        default=0,
        help="the portal's UPLOAD_THREADS (0: one per core, at most 8); 1 is timed beside it",
    )
    p.add_argument(
        "--profile-upload",
        action="store_true",
        help="cProfile the upload service (serial, in-process) on the upload's cells",
    )
    p.add_argument(
        "--workdir", type=Path, help="an empty folder to keep the system's files in (default: temp)"
    )
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    if args.images < 2:
        raise SystemExit("--images must be at least 2 (the two-worker run splits them)")
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"--workdir {args.workdir} is not empty: the run needs a fresh database")
    started = time.time()
    machine = machine_info()
    if args.wait_quiet > 0:
        print("waiting for the other processes to leave the CPUs...", flush=True)
        machine["wait_for_quiet"] = wait_for_quiet(args.wait_quiet)
    model_runs: list[ModelRun] = []
    pipeline_runs: list[PipelineRun] = []
    engine_runs: list[EngineRun] = []
    extra: dict[str, Any] = {}
    if args.only in {"shards", "fair_share"}:
        extra.update(run_sharding(args))
    if args.only in {"all", "pipeline", "upload"}:
        model_runs, pipeline_runs, pipeline_extra = run_pipeline(args)
        extra.update(pipeline_extra)
    if args.only in {"all", "engine"}:
        engine_runs, extra["engine_held_out"], extra["engines_skipped"] = run_engine(args)
    config = {
        "model": str(args.model),
        "model_sha256": sha256_of(args.model),
        "data": str(args.data),
        "images": args.images,
        "chunk_size": CHUNK_SIZE,
        "engine_batch_size": CHUNK_SIZE,
        "engine_threads": args.threads,
        "model_threads": [run.threads for run in model_runs],
        "worker_threads": 1,
        "two_worker_split": "two batches of half the images each, queued by one commit",
        "repeats": args.repeats,
        "engine_images_per_second": "batch size / median batch time (mean kept beside it)",
        "command": " ".join(sys.argv),
        "seconds": round(time.time() - started, 1),
    }
    report = build_report(
        model_runs=model_runs,
        pipeline_runs=pipeline_runs,
        engine_runs=engine_runs,
        machine=machine,
        config=config,
        extra=extra,
    )
    write_json(report, args.json)
    print(format_summary(report))
    print(f"\nwrote {args.json} ({config['seconds']:.0f}s)")
    return report


def run_pipeline(
    args: argparse.Namespace,
) -> tuple[list[ModelRun], list[PipelineRun], dict[str, Any]]:
    """The pipeline's runs and, with --only all or upload, the upload figures (extra keys).

    --only upload times one worker alone (the upload's yardstick), no raw model or profile.
    """
    samples = pipeline_images(args.data, args.images)
    if args.only == "upload":
        return [], *run_upload_only(args, samples)
    classifier = Classifier.load(args.model, device="cpu")
    chunks = pipeline.decode_images(classifier, samples, CHUNK_SIZE)
    # The worker's engine, chosen as the worker chooses it (INFERENCE_ENGINE=auto), checked on
    # the first cells; the eager model stays as the baseline.
    # One intra-op thread, as a worker with INFERENCE_THREADS=1 has (ONNX Runtime takes its
    # thread count when the session is built).
    choice = choose_engine(
        classifier.eager,
        input_size=classifier.input_size,
        check=chunks[0][:8],
        wanted="auto",
        threads=1,
    )
    engine = Classifier.load(args.model, device="cpu")
    engine.model, engine.engine = choice.model, choice.name
    print(f"worker engine: {choice.name} {list(choice.passed_over)}", flush=True)
    model_runs: list[ModelRun] = []
    runs: list[PipelineRun] = []
    with tempfile.TemporaryDirectory(prefix="hv-bench-") as temp:
        system = pipeline.setup_system(args.workdir or Path(temp), args.model)
        # Every repeat runs each setting once, in turn (raw 1 thread, raw 2 threads, 1 worker,
        # 2 workers): the VM's speed drifts over minutes, and a burst of load elsewhere should
        # hit one run of a setting, not all of them.
        for repeat in range(args.repeats):
            print(f"raw model, eager, 1 thread, run {repeat + 1}...", flush=True)
            model_runs.append(pipeline.time_model(classifier, chunks, threads=1))
            print(f"raw model, {choice.name}, 1 thread, run {repeat + 1}...", flush=True)
            model_runs.append(pipeline.time_model(engine, chunks, threads=1))
            for workers in (1, 2):
                print(f"whole system, {workers} worker(s), run {repeat + 1}...", flush=True)
                runs.append(pipeline.run_system(system, samples, workers=workers))
        del chunks, classifier, engine
        print("profiling the worker's job in-process...", flush=True)
        extra: dict[str, Any] = {
            "worker_profile": pipeline.profile_worker(system, samples[: args.profile_images])
        }
        if args.only == "all":
            extra.update(run_upload(args, system, runs))
    return model_runs, runs, extra


def run_upload_only(
    args: argparse.Namespace, samples: list[Sample]
) -> tuple[list[PipelineRun], dict[str, Any]]:
    runs: list[PipelineRun] = []
    with tempfile.TemporaryDirectory(prefix="hv-bench-") as temp:
        system = pipeline.setup_system(args.workdir or Path(temp), args.model)
        for repeat in range(args.repeats):
            print(f"whole system, 1 worker, run {repeat + 1}...", flush=True)
            runs.append(pipeline.run_system(system, samples, workers=1))
        return runs, run_upload(args, system, runs)


def run_upload(
    args: argparse.Namespace, system: pipeline.System, runs: list[PipelineRun]
) -> dict[str, Any]:
    """Upload figures against the fastest one-worker run of this same run."""
    one_worker = [run.images_per_second for run in runs if run.workers == 1]
    upload = upload_speed.run(
        system,
        data=args.data,
        model=args.model,
        upload_images=args.upload_images,
        report_images=args.report_images,
        upload_threads=args.upload_threads,
        repeats=args.repeats,
        worker_images_per_second=max(one_worker) if one_worker else None,
        profile=args.profile_upload,
    )
    print(upload_speed.summary(upload), flush=True)
    return upload


def run_sharding(args: argparse.Namespace) -> dict[str, Any]:
    """bench/shards.py or bench/fair_share.py on a fresh installation of their own."""
    with tempfile.TemporaryDirectory(prefix="hv-bench-") as temp:
        system = pipeline.setup_system(args.workdir or Path(temp), args.model)
        if args.only == "shards":
            result = shards.run(
                system,
                data=args.data,
                model=args.model,
                cells=args.shard_cells,
                shard_size=args.shard_size,
                repeats=args.repeats,
            )
            print(shards.summary(result), flush=True)
            return result
        result = fair_share.run(
            system,
            data=args.data,
            model=args.model,
            big_cells=args.fair_big_cells,
            unique_cells=args.fair_unique,
            small_cells=args.fair_small_cells,
            labs=args.fair_labs,
            workers=args.fair_workers,
            shard_size=args.shard_size,
        )
        print(fair_share.summary(result), flush=True)
        return result


def run_engine(args: argparse.Namespace) -> tuple[list[EngineRun], dict[str, Any], dict[str, str]]:
    classifier = Classifier.load(args.model, device="cpu")
    held_out = engine_bench.load_held_out(
        classifier,
        args.model,
        args.data,
        batch_size=CHUNK_SIZE,
        val_limit=args.val_limit,
        calibration_count=args.calibration,
    )
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    runs, skipped = engine_bench.run_engines(
        classifier, held_out, engines=engines, threads=args.threads
    )
    return runs, held_out.description, skipped


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    run()
