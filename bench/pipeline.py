"""Pipeline benchmark: the raw model against the whole system on the same real images.

    .venv/bin/python -m bench --json OUT --only pipeline   # this part alone

(a) `time_model`: `Classifier.load` in this process, the images decoded to tensors beforehand,
    forward passes (`predict_logits`) timed at the worker's chunk size.
(b) `run_system`: a fresh SQLite database, media and broker folder in a temp dir, migrated here;
    `services.submit_batch` (upload validation + storage), the message queued on commit to the
    embedded filesystem broker, real `celery worker` processes (workers.processes.celery_worker)
    with one intra-op thread each, timed until every batch is done (predictions + report).
    Two workers get the images as two half batches, both queued by one commit (a batch is
    worked on by one delivery at a time, so one batch cannot use two workers).
(c) `profile_worker`: the worker's job (`batch_job.process_batch`) run in this process on one
    more batch, with each stage timed, to say where queue->done time goes beyond the model.
"""

from __future__ import annotations

import io
import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import torch
from PIL import Image as PILImage

from bench.data import Sample
from bench.machine import metered
from bench.report import ModelRun, PipelineRun
from ml.inference import Classifier

if TYPE_CHECKING:
    from webportal.cases.models import Batch, Case
    from webportal.cases.services import PreparedUpload

T = TypeVar("T")

# Seconds to wait for a worker process to import Django and torch and load its model.
WORKER_START_TIMEOUT = 180.0
# Seconds to wait for a batch to finish; far above any run on two cores.
BATCH_TIMEOUT = 900.0
POLL_SECONDS = 0.05


# --- (a) the raw model ----------------------------------------------------------------------


def decode_images(
    classifier: Classifier, samples: Sequence[Sample], chunk: int
) -> list[torch.Tensor]:
    """The input tensors of the worker's chunks, decoded from the original files beforehand."""
    tensors = []
    for start in range(0, len(samples), chunk):
        images = [_open_rgb(path) for path, _ in samples[start : start + chunk]]
        tensors.append(classifier.preprocess(images))
    return tensors


def time_model(classifier: Classifier, chunks: Sequence[torch.Tensor], *, threads: int) -> ModelRun:
    """One timed forward pass per chunk with `threads` intra-op threads, after a warm-up pass."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    classifier.predict_logits(chunks[0])  # first call allocates; not part of the steady state
    first_call = time.perf_counter() - start
    seconds = []
    cpu: dict[str, float] = {}
    with metered(cpu):
        for tensor in chunks:
            start = time.perf_counter()
            classifier.predict_logits(tensor)
            seconds.append(time.perf_counter() - start)
    return ModelRun(
        engine=classifier.engine,
        threads=threads,
        batch_size=len(chunks[0]),
        images=sum(len(t) for t in chunks),
        batch_seconds=seconds,
        first_call_seconds=first_call,
        cpu=cpu,
    )


# --- (b) the whole system -------------------------------------------------------------------


@dataclass(frozen=True)
class System:
    """A private installation: its folders, database URL and the case batches go into."""

    var_dir: Path
    database_url: str
    broker_folder: Path
    media_root: Path
    model_path: Path
    case_id: int
    env: dict[str, str] = field(default_factory=dict)


def setup_system(var_dir: Path, model_path: Path) -> System:
    """Point this process at a fresh database, broker and media in var_dir; migrate; register.

    Must run before anything imports Django models: settings are read once, at django.setup().
    """
    var_dir.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{var_dir / 'bench.sqlite3'}"
    env = {
        "DJANGO_SETTINGS_MODULE": "webportal.settings",
        # A throwaway key: the benchmark's database holds nothing worth signing.
        "SECRET_KEY": os.environ.get("SECRET_KEY") or secrets.token_hex(32),
        "HEMATOVISION_VAR_DIR": str(var_dir),
        # Set explicitly so a DATABASE_URL/CELERY_BROKER_URL in the caller's environment (CI
        # points them at PostgreSQL and Redis) cannot send the benchmark elsewhere.
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": "filesystem://",
        "CELERY_BROKER_FOLDER": str(var_dir / "broker"),
        "MEDIA_ROOT": str(var_dir / "media"),
        # DEBUG keeps every SQL query in memory: not what production runs.
        "DEBUG": "false",
        "LOG_LEVEL": "INFO",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    from webportal.accounts.models import Lab
    from webportal.cases import services
    from webportal.pipeline import registration

    call_command("migrate", verbosity=0, interactive=False)
    model_version = registration.register_model(checkpoint_path=model_path.resolve(), name="bench")
    lab = Lab.objects.create(name="Benchmark lab", slug="benchmark", active_model=model_version)
    case = services.create_case(lab=lab, created_by=None, accession_number="BENCH-0001")
    return System(
        var_dir=var_dir,
        database_url=database_url,
        broker_folder=var_dir / "broker",
        media_root=var_dir / "media",
        model_path=model_path,
        case_id=case.pk,
        env=env,
    )


@dataclass(frozen=True)
class Worker:
    pid: int  # leads its own process group
    log: Path


@contextmanager
def running_workers(system: System, count: int, *, threads: int = 1) -> Iterator[list[Worker]]:
    """`count` real celery worker processes, started, model loaded, ready."""
    from workers.processes import celery_worker

    logs = [system.var_dir / f"worker-{count}-{i}-{secrets.token_hex(3)}.log" for i in range(count)]
    extra_env = {
        **system.env,
        "INFERENCE_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
    }
    with ExitStack() as stack:
        workers = [
            Worker(
                pid=stack.enter_context(
                    celery_worker(
                        broker_url="filesystem://",
                        broker_folder=system.broker_folder,
                        database=system.database_url,
                        media_root=system.media_root,
                        log_path=log,
                        extra_env=extra_env,
                    )
                ).pid,
                log=log,
            )
            for log in logs
        ]
        _wait_until_ready(logs)
        yield workers


def _wait_until_ready(logs: Sequence[Path]) -> None:
    """Each worker has loaded and warmed up its model (worker_process_init) and is consuming."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while time.monotonic() < deadline:
        texts = [log.read_text(errors="replace") if log.exists() else "" for log in logs]
        if all(" ready." in text and "warmed up " in text for text in texts):
            return
        time.sleep(0.2)
    raise RuntimeError(
        "workers did not become ready in time:\n"
        + "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}" for log in logs)
    )


def upload_files(samples: Sequence[Sample]) -> list[tuple[str, BinaryIO]]:
    """The files as the portal receives them: names and in-memory streams."""
    return [(path.name, io.BytesIO(path.read_bytes())) for path, _ in samples]


def run_system(system: System, samples: Sequence[Sample], *, workers: int) -> PipelineRun:
    """Submit `samples` as `workers` batches in one transaction and time them to done.

    With one worker that is one batch; with two, two halves, so each worker has a batch: both
    messages are sent by the same commit, and the clock runs from the first message queued to
    the last batch done.
    """
    from django.db import transaction

    from webportal.cases import services
    from webportal.cases.models import Case

    case = Case.objects.get(pk=system.case_id)
    parts = [list(samples[i::workers]) for i in range(workers)]
    uploads = [upload_files(part) for part in parts]  # read from disk before the clock starts
    cpu: dict[str, float] = {}
    with running_workers(system, workers) as processes, metered(cpu, [w.pid for w in processes]):
        start = time.perf_counter()
        # The upload as the portal does it: validation and storage outside the transaction,
        # then the rows of both batches in one commit, which sends their messages.
        prepared = [_prepare(case, files) for files in uploads]
        store_seconds = time.perf_counter() - start
        with transaction.atomic():
            batches = [
                services.submit_prepared_batch(case=case, created_by=None, prepared=upload)
                for upload in prepared
            ]
        # The atomic block has committed and its on_commit hooks have sent the messages.
        upload_seconds = time.perf_counter() - start
        first_queued = {b.pk: _enqueued_at(b.pk) for b in batches}
        _wait_until_done([b.pk for b in batches])
        # Celery logs "Task workers.tasks.process_batch[<id>] received" once per delivery.
        received = sum(w.log.read_text(errors="replace").count("] received") for w in processes)
    return _pipeline_run(
        workers=workers,
        batches=[b.pk for b in batches],
        first_queued=first_queued,
        upload_seconds=upload_seconds,
        store_seconds=store_seconds,
        deliveries=received,
        cpu=cpu,
    )


def _prepare(case: Case, files: list[tuple[str, BinaryIO]]) -> PreparedUpload:
    from webportal.cases import registry, services

    return services.prepare_upload(
        model_version=registry.active_model_for(lab=case.lab), files=files
    )


def _submit(case: Case, files: list[tuple[str, BinaryIO]]) -> Batch:
    """A batch in ONE shard, for the benches that time one job over a whole batch in this
    process (the profile, side_by_side): sharded, one call would do only its first shard."""
    from django.test import override_settings

    from webportal.cases import services

    with override_settings(BATCH_SHARD_IMAGES=100_000):
        return services.submit_batch(case=case, created_by=None, files=files)


def _enqueued_at(batch_id: int) -> float:
    from webportal.cases.models import Batch

    stamp = Batch.objects.values_list("enqueued_at", flat=True).get(pk=batch_id)
    if stamp is None:
        raise RuntimeError(f"batch {batch_id} was not queued")
    return stamp.timestamp()


def _wait_until_done(batch_ids: Sequence[int]) -> None:
    from webportal.cases.models import Batch

    deadline = time.monotonic() + BATCH_TIMEOUT
    while time.monotonic() < deadline:
        rows = list(Batch.objects.filter(pk__in=batch_ids).values_list("status", "error"))
        failed = [error for status, error in rows if status in {"failed", "cancelled"}]
        if failed:
            raise RuntimeError(f"a benchmark batch did not finish: {failed}")
        if all(status == "done" for status, _ in rows):
            return
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"batches {list(batch_ids)} not done after {BATCH_TIMEOUT:.0f}s")


def _pipeline_run(
    *,
    workers: int,
    batches: Sequence[int],
    first_queued: dict[int, float],
    upload_seconds: float,
    store_seconds: float,
    deliveries: int,
    cpu: dict[str, float],
) -> PipelineRun:
    """Read the timestamps the system wrote, check its work, and make the run's figures."""
    from webportal.cases.models import Batch, Prediction
    from webportal.reports.models import Report

    per_batch: list[dict[str, Any]] = []
    for batch in Batch.objects.filter(pk__in=batches).order_by("pk"):
        assert batch.started_at is not None
        assert batch.finished_at is not None
        predictions = Prediction.objects.filter(cell__image__batch=batch).count()
        if predictions != batch.total_images or not Report.objects.filter(batch=batch).exists():
            raise RuntimeError(f"batch {batch.pk}: {predictions}/{batch.total_images} or no report")
        queued = first_queued[batch.pk]
        per_batch.append(
            {
                "batch_id": batch.pk,
                "images": batch.total_images,
                "rejected": batch.rejected_files,
                "queued_at": queued,
                "claimed_at": batch.started_at.timestamp(),
                "done_at": batch.finished_at.timestamp(),
                "queue_to_claim_seconds": batch.started_at.timestamp() - queued,
                "claim_to_done_seconds": (batch.finished_at - batch.started_at).total_seconds(),
            }
        )
    first = min(row["queued_at"] for row in per_batch)
    return PipelineRun(
        workers=workers,
        batches=len(per_batch),
        images=sum(row["images"] for row in per_batch),
        upload_seconds=upload_seconds,
        queue_to_done_seconds=max(row["done_at"] for row in per_batch) - first,
        queue_to_claim_seconds=min(row["claimed_at"] for row in per_batch) - first,
        # Every delivery beyond one per batch: its other shards (BATCH_SHARD_IMAGES), or a resend.
        requeues=max(0, deliveries - len(per_batch)),
        upload_store_seconds=store_seconds,
        per_batch=per_batch,
        cpu=cpu,
    )


# --- (c) where the worker's time goes -------------------------------------------------------


def profile_worker(
    system: System, samples: Sequence[Sample], *, threads: int = 1
) -> dict[str, Any]:
    """Run the worker's job in this process on one batch, timing each stage (seconds).

    Same code as the worker (batch_job.process_batch), same thread count, same engine; the
    stages are timed by batch_job's own hooks (recording_stages). Main-thread stages add up
    to the wall time; the forward pass runs in the model thread (the main thread saves the
    chunk before meanwhile, and waits for the rest), decoding in the prefetch thread; only
    their waits show on the main thread.
    """
    from django.db import transaction

    from webportal.cases.models import Batch, Case
    from webportal.pipeline import batch_job, classifiers

    torch.set_num_threads(threads)
    case = Case.objects.get(pk=system.case_id)
    files = upload_files(samples)
    with transaction.atomic():
        batch = _submit(case, files)
    # The message it sent stays in the broker folder: no worker is running now.
    model_version = Batch.objects.select_related("model_version").get(pk=batch.pk).model_version
    classifier = classifiers.load_classifier(model_version=model_version)  # loading is not timed
    stages: dict[str, float] = defaultdict(float)
    lock = threading.Lock()

    def record(stage: str, seconds: float) -> None:  # from both threads
        with lock:
            stages[stage] += seconds

    cpu: dict[str, float] = {}
    with batch_job.recording_stages(record):
        start = time.perf_counter()
        with metered(cpu):
            outcome = batch_job.process_batch(batch_id=batch.pk)
        wall = time.perf_counter() - start
    if outcome.status != "done":
        raise RuntimeError(f"profiled batch ended {outcome.status}")
    main_thread = (
        "wait_for_next_chunk",
        "wait_for_forward",
        "softmax_and_dicts",
        "save_predictions",
        "cancel_checks",
        "batch_check",
        "finish_and_report",
    )
    images = outcome.classified
    return {
        "images": images,
        "threads": threads,
        "engine": classifier.engine,
        "wall_seconds": wall,
        "images_per_second": images / wall if wall else 0.0,
        "main_thread_seconds": {
            **{name: stages[name] for name in main_thread},
            "other": wall - sum(stages[name] for name in main_thread),
        },
        "model_thread_seconds": {"forward": stages["forward"]},
        "prefetch_thread_seconds": {
            name: stages[name] for name in ("open_and_decode", "resize_normalise")
        },
        "decode_costs_ms_per_image": decode_costs(classifier, samples, batch.pk),
        "cpu": cpu,
    }


def decode_costs(
    classifier: Classifier, samples: Sequence[Sample], batch_id: int
) -> dict[str, float]:
    """Milliseconds per image to turn a file into model input: what the worker reads (the copy
    fitted to the model at upload, an uncompressed BMP), against the same pixels as the level-1
    PNG it read before, the stored full-size PNG and the uploaded JPEG."""
    from django.conf import settings

    from webportal.cases.models import Image

    media = Path(settings.MEDIA_ROOT)
    rows = Image.objects.filter(batch_id=batch_id).order_by("id").values_list("file", "model_input")
    png_paths = [media / name for name, _ in rows]
    fitted_paths = [media / fitted for _, fitted in rows if fitted]
    fitted_as_png = [_as_png(path) for path in fitted_paths]
    originals = [path for path, _ in samples]

    def to_input(paths: Sequence[Path | BinaryIO]) -> torch.Tensor:
        return classifier.preprocess([_open_rgb(p) for p in paths], fitted=[True] * len(paths))

    return {
        "fitted_copy_decode_preprocess": _ms_per_image(lambda: to_input(fitted_paths)),
        "fitted_copy_as_png_decode_preprocess": _ms_per_image(
            lambda: to_input([io.BytesIO(data) for data in fitted_as_png])
        ),
        "stored_png_decode": _ms_per_image(lambda: [_open_rgb(p) for p in png_paths]),
        "stored_png_decode_preprocess": _ms_per_image(
            lambda: classifier.preprocess([_open_rgb(p) for p in png_paths])
        ),
        "original_jpeg_decode": _ms_per_image(lambda: [_open_rgb(p) for p in originals]),
        "original_jpeg_decode_preprocess": _ms_per_image(
            lambda: classifier.preprocess([_open_rgb(p) for p in originals])
        ),
        "fitted_copy_bytes": _mean_size(fitted_paths),
        "fitted_copy_as_png_bytes": sum(map(len, fitted_as_png)) / max(1, len(fitted_as_png)),
        "stored_png_bytes": _mean_size(png_paths),
        "original_jpeg_bytes": _mean_size(originals),
    }


def _as_png(path: Path) -> bytes:
    """The image re-encoded as the upload encoded fitted copies before (PNG, level 1)."""
    out = io.BytesIO()
    _open_rgb(path).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _mean_size(paths: Sequence[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / max(1, len(paths))


def _ms_per_image(work: Callable[[], Sized]) -> float:
    start = time.perf_counter()
    done = len(work())
    return 1000 * (time.perf_counter() - start) / max(1, done)


def _open_rgb(path: Path | BinaryIO) -> PILImage.Image:
    with PILImage.open(path) as image:
        return image.convert("RGB")
