"""Raw timings in, the benchmark report out: pure functions, no clocks, no torch, no Django.

The contract keys (the issue's names) are at the top level of the report; everything they are
computed from is kept beside them, so a reader can redo every ratio from the raw figures.

On a shared machine other processes only ever slow a run down, so when a configuration was run
more than once the contract uses its fastest run (best of N, as timeit does); every run is kept,
and the ones used are marked `"used": true`.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

CONTRACT_KEYS: Final = (
    "model_images_per_second",
    "pipeline_images_per_second",
    "pipeline_vs_model",
    "pipeline_vs_eager",
    "two_vs_one_worker",
    "engine_speedup",
    "engine_accuracy_delta",
)
TARGETS: Final = {
    "pipeline_vs_model": 0.90,
    # One worker end to end against the model as trained (eager fp32), same threads, same run.
    "pipeline_vs_eager": 3.0,
    "two_vs_one_worker": 1.70,
    # An engine may cost at most 0.2 accuracy points on held-out images (a fraction here).
    "engine_accuracy_delta": -0.002,
}
BASELINE_ENGINE: Final = "eager"
# Figures are ratios of floats: a delta of exactly -0.2 points computes as -0.0020000000000000018.
TOLERANCE: Final = 1e-9


@dataclass(frozen=True)
class ModelRun:
    """Timed forward passes of the raw model over pre-decoded tensors, in-process."""

    threads: int
    batch_size: int
    images: int
    batch_seconds: list[float]
    engine: str = "eager"  # ml.engine name: the worker's engine, or eager (the baseline)
    first_call_seconds: float = 0.0  # the untimed warm-up pass: what a cold worker pays once
    cpu: dict[str, float] = field(default_factory=dict)  # bench.machine.cpu_usage while timed

    @property
    def seconds(self) -> float:
        return sum(self.batch_seconds)

    @property
    def images_per_second(self) -> float:
        return _rate(self.images, self.seconds)

    @property
    def median_batch_images_per_second(self) -> float:
        """Batch size over the median batch time: insensitive to a few disturbed batches."""
        return _rate(self.batch_size, statistics.median(self.batch_seconds))


@dataclass(frozen=True)
class PipelineRun:
    """One measured pass of the whole system: upload, broker, worker processes, database.

    upload_seconds: submit_batch calls until their transaction committed (validation, PNG
    re-encode, storage, rows); upload_store_seconds is the storage part of it (PNG files
    written, Image and Cell rows). queue_to_done_seconds: the first batch message queued to the last
    batch done (database timestamps). queue_to_claim_seconds: first message queued to the first
    claim by a worker (broker latency).
    """

    workers: int
    batches: int
    images: int
    upload_seconds: float
    queue_to_done_seconds: float
    queue_to_claim_seconds: float
    upload_store_seconds: float = 0.0
    requeues: int = 0
    per_batch: list[dict[str, Any]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # from upload start to the last batch done

    @property
    def total_seconds(self) -> float:
        return self.upload_seconds + self.queue_to_done_seconds

    @property
    def images_per_second(self) -> float:
        return _rate(self.images, self.queue_to_done_seconds)


@dataclass(frozen=True)
class EngineRun:
    """One engine over the held-out images at a fixed batch size, timed and scored."""

    engine: str
    threads: int
    batch_size: int
    images: int  # held-out images scored
    timed_images: int  # images run through the timed pass: `images` plus the last batch's padding
    batch_seconds: list[float]  # the timed pass over every image, after one warm-up batch
    build_seconds: float  # export, calibration, compilation: paid once per worker process
    correct: int
    agree_with_baseline: int  # same predicted class as eager fp32
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.batch_seconds)

    @property
    def images_per_second(self) -> float:
        """Batch size over the median batch time.

        The engines run one after another for minutes; the median keeps a burst of work by
        another process from deciding which engine looks faster. The mean is kept beside it.
        """
        return _rate(self.batch_size, statistics.median(self.batch_seconds))

    @property
    def mean_images_per_second(self) -> float:
        return _rate(self.timed_images, self.seconds)

    @property
    def accuracy(self) -> float:
        return self.correct / self.images if self.images else 0.0


def choose_engine(
    runs: Sequence[EngineRun],
    *,
    baseline: str = BASELINE_ENGINE,
    max_accuracy_drop: float = -TARGETS["engine_accuracy_delta"],
) -> EngineRun:
    """The fastest engine whose accuracy is at most `max_accuracy_drop` below the baseline's."""
    reference = _engine(runs, baseline)
    eligible = [
        run for run in runs if run.accuracy - reference.accuracy >= -max_accuracy_drop - TOLERANCE
    ]
    return max(eligible, key=lambda run: run.images_per_second)


def build_report(
    *,
    model_runs: Sequence[ModelRun],
    pipeline_runs: Sequence[PipelineRun],
    engine_runs: Sequence[EngineRun],
    machine: dict[str, Any],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole report; a contract key is None when its benchmark was not run."""
    figures: dict[str, float | None] = dict.fromkeys(CONTRACT_KEYS)
    # The raw-model figure is the worker's engine (what the product runs); eager is kept apart
    # as the baseline of pipeline_vs_eager.
    engines = {run.engine for run in model_runs}
    worker_engine = next(iter(engines - {BASELINE_ENGINE}), BASELINE_ENGINE) if engines else None
    eager_one_thread = _fastest(
        [run for run in model_runs if run.threads == 1 and run.engine == BASELINE_ENGINE]
    )
    one_thread = _fastest(
        [run for run in model_runs if run.threads == 1 and run.engine == worker_engine]
    )
    one_worker = _fastest([run for run in pipeline_runs if run.workers == 1])
    two_workers = _fastest([run for run in pipeline_runs if run.workers == 2])
    used = [*_fastest_per_setting(model_runs), *_fastest_per_setting(pipeline_runs)]
    if one_thread is not None:
        figures["model_images_per_second"] = one_thread.images_per_second
    if one_worker is not None:
        figures["pipeline_images_per_second"] = one_worker.images_per_second
        if one_thread is not None:
            figures["pipeline_vs_model"] = _ratio(
                one_worker.images_per_second, one_thread.images_per_second
            )
        if eager_one_thread is not None:
            figures["pipeline_vs_eager"] = _ratio(
                one_worker.images_per_second, eager_one_thread.images_per_second
            )
        if two_workers is not None:
            figures["two_vs_one_worker"] = _ratio(
                two_workers.images_per_second, one_worker.images_per_second
            )
    winner: EngineRun | None = None
    if any(run.engine == BASELINE_ENGINE for run in engine_runs):
        reference = _engine(engine_runs, BASELINE_ENGINE)
        winner = choose_engine(engine_runs)
        figures["engine_speedup"] = _ratio(winner.images_per_second, reference.images_per_second)
        figures["engine_accuracy_delta"] = winner.accuracy - reference.accuracy
    return {
        **figures,
        "worker_engine": worker_engine,
        "per_repeat": per_repeat_ratios(model_runs, pipeline_runs),
        "targets": dict(TARGETS),
        "meets_targets": {key: _meets(figures[key], target) for key, target in TARGETS.items()},
        "engine_winner": None if winner is None else winner.engine,
        "machine": machine,
        "config": config,
        "model_runs": [_with_rates(run, used=_among(run, used)) for run in model_runs],
        "pipeline_runs": [_with_rates(run, used=_among(run, used)) for run in pipeline_runs],
        "engine_runs": [_with_rates(run, used=True) for run in engine_runs],
        **(extra or {}),
    }


def per_repeat_ratios(
    model_runs: Sequence[ModelRun], pipeline_runs: Sequence[PipelineRun]
) -> dict[str, list[float | None]]:
    """The two pipeline ratios within each repeat (the i-th run of each setting), beside the
    contract's best-of figures: how far the VM's drift moves them from one repeat to the next."""
    engines = {run.engine for run in model_runs}
    worker_engine = next(iter(engines - {BASELINE_ENGINE}), BASELINE_ENGINE)
    one_thread = [run for run in model_runs if run.threads == 1 and run.engine == worker_engine]
    one_worker = [run for run in pipeline_runs if run.workers == 1]
    two_workers = [run for run in pipeline_runs if run.workers == 2]
    return {
        "pipeline_vs_model": [
            _ratio(pipe.images_per_second, model.images_per_second)
            for pipe, model in zip(one_worker, one_thread, strict=False)
        ],
        "two_vs_one_worker": [
            _ratio(two.images_per_second, one.images_per_second)
            for two, one in zip(two_workers, one_worker, strict=False)
        ],
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def format_summary(report: dict[str, Any]) -> str:
    """The figures and ratios as a few lines of text, for the terminal."""
    lines = ["", "== raw model (in-process, pre-decoded tensors) =="]
    for run in report["model_runs"]:
        lines.append(
            f"{_mark(run)} {run.get('engine', 'eager')}, {run['threads']} thread(s), "
            f"batch {run['batch_size']}: "
            f"{run['images_per_second']:.1f} images/s ({run['images']} images)"
            f"{_load(run)}"
        )
    lines.append("== whole system (upload -> broker -> celery worker(s) -> database) ==")
    for run in report["pipeline_runs"]:
        lines.append(
            f"{_mark(run)} {run['workers']} worker(s), {run['batches']} batch(es), "
            f"{run['images']} images: "
            f"upload {run['upload_seconds']:.1f}s (storage {run['upload_store_seconds']:.1f}s), "
            f"queue->done {run['queue_to_done_seconds']:.1f}s "
            f"(first claim after {run['queue_to_claim_seconds']:.1f}s), "
            f"total {run['total_seconds']:.1f}s -> {run['images_per_second']:.1f} images/s"
            f"{_load(run)}"
        )
    lines.append("== CPU engines (held-out images, one process) ==")
    for run in report["engine_runs"]:
        lines.append(
            f"  {run['engine']:<20} {run['images_per_second']:7.1f} images/s  "
            f"accuracy {run['accuracy']:.4f}  agrees with eager {run['agree_with_baseline']}/"
            f"{run['images']}  build {run['build_seconds']:.1f}s{_load(run)}"
        )
    lines.append(f"  winner: {report['engine_winner']}")
    lines.append("== contract (* = the fastest run of its setting, used below) ==")
    for key in CONTRACT_KEYS:
        value = report[key]
        target = TARGETS.get(key)
        verdict = ""
        if target is not None and value is not None:
            met = _meets(value, target)
            verdict = f"  (target >= {target}: {'met' if met else 'NOT met'})"
        shown = "n/a" if value is None else f"{value:.4f}"
        lines.append(f"  {key:<28} {shown}{verdict}")
    for key, ratios in report.get("per_repeat", {}).items():
        if ratios:
            shown = ", ".join("n/a" if r is None else f"{r:.2f}" for r in ratios)
            lines.append(f"  {key} per repeat: {shown}")
    return "\n".join(lines)


# --- helpers --------------------------------------------------------------------------------


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else 0.0


def _mark(run: dict[str, Any]) -> str:
    """'*' before the runs the contract figures come from."""
    return " *" if run.get("used") else "  "


def _load(run: dict[str, Any]) -> str:
    """A note on how busy the rest of the machine was while the run was timed."""
    other = run.get("cpu", {}).get("other_cores")
    return "" if other is None else f"  [other processes: {other:.2f} cores]"


def _meets(value: float | None, target: float) -> bool | None:
    return None if value is None else value >= target - TOLERANCE


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


Run = ModelRun | PipelineRun


def _fastest(runs: Sequence[Run]) -> Any:
    """The fastest of the runs of one setting (None when there is none)."""
    return max(runs, key=lambda run: run.images_per_second, default=None)


def _fastest_per_setting(runs: Sequence[Run]) -> list[Run]:
    """The fastest run of each setting (thread count or worker count)."""
    settings: dict[int, list[Run]] = {}
    for run in runs:
        key = run.threads if isinstance(run, ModelRun) else run.workers
        settings.setdefault(key, []).append(run)
    return [_fastest(group) for group in settings.values()]


def _engine(runs: Sequence[EngineRun], name: str) -> EngineRun:
    for run in runs:
        if run.engine == name:
            return run
    raise ValueError(f"no {name!r} run among {[run.engine for run in runs]}")


def _among(run: Run, runs: Sequence[Run]) -> bool:
    """Whether this very run object is in runs (runs of equal figures are still different)."""
    return any(run is other for other in runs)


def _with_rates(run: ModelRun | PipelineRun | EngineRun, *, used: bool) -> dict[str, Any]:
    """The run's raw fields plus its derived figures, as JSON-ready values."""
    derived = (
        "seconds",
        "images_per_second",
        "median_batch_images_per_second",
        "mean_images_per_second",
        "total_seconds",
        "accuracy",
    )
    out = asdict(run)
    out.update({name: getattr(run, name) for name in derived if hasattr(run, name)})
    out["used"] = used
    return out
