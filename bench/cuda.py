"""The GPU bench (issue 23): the model, the engine choice and the whole pipeline on CUDA.

    python -m bench.cuda --data DIR --json bench/results/STAMP-cuda.json [--budget 480]

One prepared script for the day a GPU is lent (bench/README.md, "On a lent GPU", has the exact
command for the device tool, which sends the working tree only). On a machine without CUDA it
prints "no CUDA device: ..." and exits 2 before it loads, starts or writes anything.

(a) model: the shipped checkpoint's bare forward pass on the GPU at large batch sizes, fp32
    and autocast (fp16 on CUDA), NCHW and channels-last, on tensors already on the device;
    and the worker's own call (`Classifier.predict_logits`: host tensor in, channels-last +
    fp16 autocast, logits back) at the same sizes.
(b) engine: what `ml.engine.choose_engine` picks on this machine (a CPU choice: a CUDA worker
    never calls it, `classifiers.load_classifier` keeps eager on CUDA), and whether the CUDA
    paths give CPU eager's answers on ml/check_cells and on the first cells of --data.
(c) pipeline: bench/pipeline.py's installation (SQLite, filesystem broker) with one real
    worker, which puts the model on CUDA itself (`Classifier.load`: CUDA when available), at
    each --chunk-sizes value (INFERENCE_CHUNK_SIZE_GPU, `classifiers.chunk_size_for`).

Every figure is written to the JSON as soon as it is measured, so a crash or a kill keeps what
was measured. --budget caps the wall time: a part (or a setting) that would not fit in what is
left is skipped, and the JSON says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image as PILImage

from bench.data import Sample, interleaved
from bench.machine import machine_info
from ml.checkpoint import sha256_of
from ml.data import IMAGE_EXTENSIONS, list_samples
from ml.engine import CHECK_CELLS_DIR, MAX_PROBABILITY_CHANGE, check_cells, choose_engine
from ml.inference import Classifier

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "ml" / "weights" / "pbc8-mobilenetv2.pt"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "pbc" / "dev"
RESULTS = REPO / "bench" / "results"
# Sized so the whole run ends well inside the device tool's 10 minutes a command.
DEFAULT_BUDGET_SECONDS = 480.0
# What is kept back for writing the JSON and stopping the last worker.
RESERVE_SECONDS = 15.0
# A pipeline run starts a worker (imports, CUDA, model, warm-up), uploads and classifies:
# it is not begun with less than this left.
PIPELINE_MIN_SECONDS = 90.0
PARTS = ("model", "engine", "pipeline")
NO_CUDA_EXIT = 2


class Budget:
    """The wall time the run may take, counted from its start."""

    def __init__(self, seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = clock() + seconds
        self.seconds = seconds

    def left(self) -> float:
        return self.deadline - self.clock() - RESERVE_SECONDS

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


class Results:
    """The run's JSON, rewritten whole (write then rename) after every figure."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.save()

    def put(self, part: str, key: str, value: Any) -> None:
        self.data.setdefault(part, {})[key] = value
        self.save()

    def append(self, part: str, key: str, value: Any) -> None:
        self.data.setdefault(part, {}).setdefault(key, []).append(value)
        self.save()

    def save(self) -> None:
        self.data["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        partial.replace(self.path)


@dataclass(frozen=True)
class Context:
    """What every part of one run reads: its arguments, device, cells, JSON and budget."""

    args: argparse.Namespace
    device: torch.device
    samples: Sequence[Sample]
    results: Results
    budget: Budget


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.cuda",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--json",
        type=Path,
        help="write the figures here (default: bench/results/<UTC time>-cuda.json)",
    )
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint (ml.train)")
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="cells: a folder of class folders (../shared/data/pbc/dev) or a flat folder of "
        "images (ml/check_cells); a small folder is repeated as distinct files",
    )
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_SECONDS, help="wall seconds")
    p.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated, of: model,engine,pipeline"
    )
    p.add_argument(
        "--batch-sizes", default="256,512,1024", help="batch sizes of the bare model (a)"
    )
    p.add_argument(
        "--seconds-per-setting",
        type=float,
        default=3.0,
        help="timed seconds of each model setting (after its warm-up)",
    )
    p.add_argument("--images", type=int, default=4096, help="cells through the pipeline (c)")
    p.add_argument(
        "--chunk-sizes",
        default="256,1024",
        help="the worker's INFERENCE_CHUNK_SIZE_GPU, one pipeline run each (c)",
    )
    p.add_argument(
        "--prepare-cells",
        type=Path,
        metavar="DIR",
        help="copy the first --images cells of --data (class folders, across classes) into DIR "
        "and stop: a folder that can travel to the GPU machine (needs no CUDA)",
    )
    p.add_argument("--agreement-images", type=int, default=512, help="cells of --data for (b)")
    # Tests only: CPU standing in for CUDA, to exercise the JSON and the budget without a GPU.
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> int:
    if args.prepare_cells is not None:
        copied = prepare_cells(args.data, args.prepare_cells, args.images)
        print(f"copied {copied} cells of {args.data} to {args.prepare_cells}")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device: torch {torch.__version__} sees none (torch.cuda.is_available() "
              "is False); nothing was run or written", file=sys.stderr)  # fmt: skip
        return NO_CUDA_EXIT
    parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; choose from {list(PARTS)}")
    samples = cells(args.data)  # a wrong --data stops the run before anything is written
    begun = time.monotonic()
    budget = Budget(args.budget)
    path = args.json or RESULTS / f"{datetime.now(UTC):%Y-%m-%dT%H%M}-cuda.json"
    results = Results(
        path,
        {
            "command": " ".join(["python -m bench.cuda", *sys.argv[1:]]),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "finished": False,
            "machine": {**machine_info(), **gpu_info(device)},
            "config": {
                "device": str(device),
                "model": str(args.model),
                "model_sha256": sha256_of(args.model),
                "data": str(args.data),
                "budget_seconds": args.budget,
                "parts": parts,
                "arguments": {key: str(value) for key, value in vars(args).items()},
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
            },
        },
    )
    print(f"writing {path} as it goes", flush=True)
    context = Context(args=args, device=device, samples=samples, results=results, budget=budget)
    steps: dict[str, Callable[[Context], None]] = {
        "model": measure_model,
        "engine": measure_engine,
        "pipeline": measure_pipeline,
    }
    failed = False
    for part in parts:
        if not budget.allows(10.0):
            results.put(part, "skipped", "time budget spent")
            continue
        print(f"== {part} ==", flush=True)
        started = time.monotonic()
        try:
            steps[part](context)
        except Exception as exc:  # one part's failure keeps the others' figures
            failed = True
            traceback.print_exc()
            results.put(part, "error", f"{type(exc).__name__}: {exc}")
        results.put(part, "seconds", round(time.monotonic() - started, 1))
        release(device)
    results.data["finished"] = True
    results.data["seconds"] = round(time.monotonic() - begun, 1)
    results.save()
    print(json.dumps(summary(results.data), indent=2))
    print(f"wrote {path}")
    return 1 if failed else 0


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def gpu_info(device: torch.device) -> dict[str, Any]:
    """The GPU, its driver and the CUDA torch was built with (nothing on a CPU stand-in)."""
    if device.type != "cuda":
        return {"gpu": None}
    props = torch.cuda.get_device_properties(device)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "gpu_memory_bytes": props.total_memory,
        "gpu_multiprocessors": props.multi_processor_count,
        "gpu_capability": f"{props.major}.{props.minor}",
        "cuda_driver": _nvidia_smi_driver(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),  # type: ignore[no-untyped-call]
    }


def _nvidia_smi_driver() -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cells(data: Path) -> list[Sample]:
    """The images of `data`: class folders (interleaved, like the other benches) or a flat
    folder (class taken from the name before its first '-', as ml/check_cells names them)."""
    if not data.is_dir():
        raise SystemExit(f"--data {data} is not a folder")
    found = interleaved(list_samples(data))
    if not found:
        found = [
            (path, path.name.split("-", 1)[0].lower())
            for path in sorted(data.iterdir())
            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
        ]
    if not found:
        raise SystemExit(f"--data {data} holds no images")
    return found


def prepare_cells(data: Path, folder: Path, count: int) -> int:
    """The first `count` cells of `data` across classes, copied to folder/<class>/."""
    chosen = cells(data)[:count]
    for path, label in chosen:
        (folder / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / label / path.name)
    return len(chosen)


def distinct_files(samples: Sequence[Sample], count: int, folder: Path) -> list[Sample]:
    """`count` cells as distinct files: the samples themselves while they last, then copies
    with one pixel changed, saved as PNG in `folder` (an upload refuses a file it already has
    in the same batch, by its bytes)."""
    if count <= len(samples):
        return list(samples[:count])
    folder.mkdir(parents=True, exist_ok=True)
    out = list(samples)
    for index in range(len(samples), count):
        path, label = samples[index % len(samples)]
        with PILImage.open(path) as picture:
            image = picture.convert("RGB")
        x, y = index % image.width, (index // image.width) % image.height
        r, g, b = image.getpixel((x, y))  # type: ignore[misc]  # an RGB image gives a triple
        image.putpixel((x, y), ((r + 1 + index // (image.width * image.height)) % 256, g, b))
        copy_path = folder / f"{index:06d}-{path.stem}.png"
        image.save(copy_path, format="PNG", compress_level=1)
        out.append((copy_path, label))
    return out


# --- (a) the bare model ---------------------------------------------------------------------


def measure_model(context: Context) -> None:
    """Images/s of each setting at each batch size; one JSON row per setting, as measured."""
    args, device, samples, results, budget = (
        context.args,
        context.device,
        context.samples,
        context.results,
        context.budget,
    )
    # accelerate=False keeps the eager model NCHW (accelerate converts it in place); each
    # setting below makes its own copy in its own layout.
    classifier = Classifier.load(args.model, device=device, accelerate=False)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    base = _input_batch(classifier, samples, max(sizes))
    settings = model_settings(classifier, device, args.model)
    results.put("model", "settings", {name: why for name, (why, _) in settings.items()})
    rows = len(settings) * len(sizes)
    for size in sizes:
        host = base[:size].contiguous()
        on_device = host.to(device)
        for name, (_, step) in settings.items():
            # Each setting gets its share of what is left, warm-up included.
            if not budget.allows(min(2 * args.seconds_per_setting, budget.left() / rows)):
                results.append("model", "skipped", f"{name} at {size}: time budget")
                continue
            source = host if name == "worker-predict-logits" else on_device
            row = time_setting(step, source, device, seconds=args.seconds_per_setting)
            results.append("model", "runs", {"setting": name, "batch_size": size, **row})
            print(
                f"{name:28s} batch {size:5d}: {row['images_per_second']:10.1f} images/s", flush=True
            )
    if device.type == "cuda":
        results.put("model", "peak_memory_bytes", torch.cuda.max_memory_allocated(device))


def model_settings(
    classifier: Classifier, device: torch.device, model_path: Path
) -> dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """name -> (what it is, one forward pass). The amp dtype is the worker's: fp16 on CUDA
    (bfloat16 where a CPU stands in)."""
    nchw = copy.deepcopy(classifier.eager).to(device).eval()
    nhwc = copy.deepcopy(classifier.eager).to(device).eval().to(memory_format=torch.channels_last)
    amp = classifier.amp_dtype
    last = torch.channels_last

    def run(model: torch.nn.Module, *, layout: bool, autocast: bool) -> Callable[..., Any]:
        @torch.inference_mode()
        def step(x: torch.Tensor) -> torch.Tensor:
            if layout:
                x = x.contiguous(memory_format=last)
            with torch.autocast(device.type, dtype=amp, enabled=autocast):
                out: torch.Tensor = model(x)
            return out

        return step

    worker = Classifier.load(model_path, device=device, accelerate=True)
    dtype = str(amp).removeprefix("torch.")
    return {
        "fp32-nchw": (
            "eager fp32, NCHW, input on the device",
            run(nchw, layout=False, autocast=False),
        ),
        "fp32-channels-last": ("eager fp32, NHWC", run(nhwc, layout=True, autocast=False)),
        f"autocast-{dtype}-nchw": (
            f"autocast {dtype}, NCHW",
            run(nchw, layout=False, autocast=True),
        ),
        f"autocast-{dtype}-channels-last": (
            f"autocast {dtype}, NHWC (the worker's maths)",
            run(nhwc, layout=True, autocast=True),
        ),
        "worker-predict-logits": (
            f"Classifier.predict_logits as a worker calls it: a host tensor copied to the "
            f"device, NHWC, autocast {dtype}, logits back as float",
            lambda x: worker.predict_logits(x),
        ),
    }


def time_setting(
    step: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    device: torch.device,
    *,
    seconds: float,
) -> dict[str, Any]:
    """Warm up (the first calls pick kernels), then run for about `seconds`; images/s."""
    start = time.perf_counter()
    step(x)
    synchronize(device)
    first_call = time.perf_counter() - start
    for _ in range(2):
        step(x)
    synchronize(device)
    start = time.perf_counter()
    step(x)
    synchronize(device)
    one = max(time.perf_counter() - start, 1e-6)
    iterations = max(3, int(seconds / one))
    start = time.perf_counter()
    for _ in range(iterations):
        step(x)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {
        "iterations": iterations,
        "seconds": elapsed,
        "images_per_second": len(x) * iterations / elapsed,
        "ms_per_batch": 1000 * elapsed / iterations,
        "first_call_seconds": first_call,
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _input_batch(classifier: Classifier, samples: Sequence[Sample], size: int) -> torch.Tensor:
    """`size` preprocessed cells (the samples repeated as needed), on the host."""
    wanted = min(size, len(samples))
    tensor = classifier.preprocess([_open_rgb(path) for path, _ in samples[:wanted]])
    repeats = -(-size // len(tensor))
    return tensor.repeat(repeats, 1, 1, 1)[:size].contiguous()


def _open_rgb(path: Path) -> PILImage.Image:
    with PILImage.open(path) as image:
        return image.convert("RGB")


# --- (b) the engine choice and the GPU's answers --------------------------------------------


def measure_engine(context: Context) -> None:
    """choose_engine on this machine's CPU, and the CUDA paths against CPU eager fp32."""
    args, device, samples, results = context.args, context.device, context.samples, context.results
    reference = Classifier.load(args.model, device="cpu")
    check = reference.preprocess(check_cells())
    start = time.perf_counter()
    choice = choose_engine(
        copy.deepcopy(reference.eager), input_size=reference.input_size, check=check, wanted="auto"
    )
    results.put(
        "engine",
        "choose_engine",
        {
            "winner": choice.name,
            "passed_over": list(choice.passed_over),
            "max_probability_change": choice.max_probability_change,
            "seconds": time.perf_counter() - start,
            "check_images": len(check),
            "check_cells": str(CHECK_CELLS_DIR.relative_to(REPO)),
            "threads": torch.get_num_threads(),
            "note": "a CPU choice: classifiers.load_classifier calls it only for a CPU worker; "
            "a CUDA worker runs eager with autocast and channels-last (Classifier.accelerate)",
        },
    )
    print(f"choose_engine: {choice.name} {list(choice.passed_over)}", flush=True)
    agreement_sets = {
        "check_cells": check,
        "data": reference.preprocess(
            [_open_rgb(path) for path, _ in samples[: args.agreement_images]]
        ),
    }
    paths = {
        "fp32": Classifier.load(args.model, device=device, accelerate=False),
        "worker-autocast-channels-last": Classifier.load(
            args.model, device=device, accelerate=True
        ),
    }
    for set_name, batch in agreement_sets.items():
        want = torch.softmax(reference.predict_logits(batch), dim=1)
        for path_name, classifier in paths.items():
            got = torch.softmax(_in_chunks(classifier, batch, 256).cpu(), dim=1)
            change = float((got - want).abs().max())
            same_top = int((got.argmax(1) == want.argmax(1)).sum())
            row = {
                "images": len(batch),
                "same_top_class": same_top,
                "max_probability_change": change,
                "within_engine_limit": same_top == len(batch) and change <= MAX_PROBABILITY_CHANGE,
                "engine_limit": MAX_PROBABILITY_CHANGE,
            }
            results.put("engine", f"agreement_{set_name}_{path_name}", row)
            print(f"{path_name} vs CPU eager on {set_name}: {row}", flush=True)


def _in_chunks(classifier: Classifier, batch: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat(
        [classifier.predict_logits(batch[i : i + size]) for i in range(0, len(batch), size)]
    )


# --- (c) the whole pipeline -----------------------------------------------------------------


def measure_pipeline(context: Context) -> None:
    """One worker per --chunk-sizes value, each on the same --images cells; the worker puts the
    model on CUDA itself (its log says so, recorded as worker_device)."""
    args, samples, results, budget = context.args, context.samples, context.results, context.budget
    from bench import pipeline

    chunk_sizes = [int(s) for s in args.chunk_sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="hv-bench-cuda-") as temp:
        files = distinct_files(samples, args.images, Path(temp) / "cells")
        results.put("pipeline", "images", len(files))
        results.put("pipeline", "distinct_copies", max(0, len(files) - len(samples)))
        system = pipeline.setup_system(Path(temp) / "system", args.model)
        for chunk in chunk_sizes:
            if not budget.allows(PIPELINE_MIN_SECONDS):
                results.append("pipeline", "skipped", f"chunk {chunk}: time budget")
                continue
            # A stuck worker fails the run inside the budget rather than outlive it.
            pipeline.WORKER_START_TIMEOUT = min(180.0, budget.left())
            pipeline.BATCH_TIMEOUT = budget.left()
            sized = replace(
                system,
                env={
                    **system.env,
                    "INFERENCE_CHUNK_SIZE_GPU": str(chunk),
                    # A CPU stand-in reads the CPU setting (classifiers.chunk_size_for).
                    "INFERENCE_CHUNK_SIZE": str(chunk),
                },
            )
            print(f"one worker, chunk {chunk}, {len(files)} cells...", flush=True)
            measured = pipeline.run_system(sized, files, workers=1)
            row = {
                "chunk_size": chunk,
                "images_per_second": measured.images_per_second,
                "worker_device": worker_device(sized.var_dir),
                **asdict(measured),
            }
            results.append("pipeline", "runs", row)
            print(
                f"chunk {chunk}: {measured.images_per_second:.1f} images/s queue -> done, "
                f"upload {measured.upload_seconds:.1f} s, worker on {row['worker_device']}",
                flush=True,
            )


def worker_device(var_dir: Path) -> str | None:
    """The device the last worker logged loading its model on ("loaded ... on cuda:0")."""
    logs = sorted(var_dir.glob("worker-*.log"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        found = re.findall(r"loaded .+? on (\S+) \(engine", log.read_text(errors="replace"))
        if found:
            return str(found[-1])
    return None


# --- the summary ----------------------------------------------------------------------------


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The headline figures: the best bare-model setting, the worker's call, the pipeline."""
    model_runs = data.get("model", {}).get("runs", [])
    best = max(model_runs, key=lambda r: r["images_per_second"], default=None)
    worker_calls = {
        r["batch_size"]: r["images_per_second"]
        for r in model_runs
        if r["setting"] == "worker-predict-logits"
    }
    pipeline_runs = data.get("pipeline", {}).get("runs", [])
    out: dict[str, Any] = {
        "gpu": data.get("machine", {}).get("gpu"),
        "best_model_setting": best
        and {k: best[k] for k in ("setting", "batch_size", "images_per_second")},
        "engine_winner": data.get("engine", {}).get("choose_engine", {}).get("winner"),
        "pipeline_images_per_second": {
            r["chunk_size"]: r["images_per_second"] for r in pipeline_runs
        },
        "pipeline_vs_worker_call": {
            r["chunk_size"]: r["images_per_second"] / worker_calls[r["chunk_size"]]
            for r in pipeline_runs
            if worker_calls.get(r["chunk_size"])
        },
        "errors": {p: data[p]["error"] for p in PARTS if "error" in data.get(p, {})},
    }
    return out


def run(argv: Sequence[str] | None = None) -> int:
    # `timeout` sends SIGTERM: leave through the context managers, so a worker (in its own
    # session) is stopped too; the JSON keeps what was measured ("finished": false).
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return main(get_args_parser().parse_args(argv))
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(run())
