"""Upload speed through the real portal, against one worker, measured in one run (issue 23).

    .venv/bin/python -m bench --json var/bench.json --only upload [--upload-images 500]
        [--report-images 2000] [--upload-threads 0] [--profile-upload]

The portal runs as `make run` runs it (`manage.py runserver`, its own process, on a free
port of 127.0.0.1) over the benchmark's installation (`bench.pipeline.setup_system`: SQLite,
the filesystem broker, real celery workers); uploads go through the API with the shipped client
(`webportal.api.client.Client`, an integrator token), as a lab system sends them.

- `api_upload`: one POST of N files, from the request's first byte to the response (every
  file validated, re-encoded, fitted and stored, the rows committed, the batch queued).
- `time_to_report`: workers started and ready, then one upload, timed from its first byte to
  the batch's report (`finished_at`, written with the report). The sharded-batch benchmark
  reuses it with more workers.
- `profile_upload`: cProfile of the upload service (`services.prepare_upload`, serial, in
  this process) on the same files: where a request's time goes.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data import Sample, interleaved, training_split
from bench.machine import metered
from bench.pipeline import System, running_workers
from ml.checkpoint import read_metadata
from webportal.api.client import Client

REPO = Path(__file__).resolve().parent.parent
PORTAL_START_TIMEOUT = 120.0
UPLOAD_TIMEOUT = 900.0
BATCH_TIMEOUT = 1800.0
POLL_SECONDS = 0.05

UploadFile = tuple[str, bytes]


def held_out_cells(data: Path, model: Path, count: int) -> tuple[list[Sample], int]:
    """`count` cells the model never trained on (its validation split, classes interleaved),
    topped up from the rest of `data` when the split has fewer; and how many are held out."""
    split = training_split(data, read_metadata(model).recipe)
    held_out = interleaved(sorted(split.val))[:count]
    rest = interleaved(sorted(split.train))[: count - len(held_out)]
    return held_out + rest, len(held_out)


def read_files(samples: Sequence[Sample]) -> list[UploadFile]:
    """The files' names and bytes, read before any clock starts."""
    return [(path.name, path.read_bytes()) for path, _ in samples]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Portal:
    base_url: str
    upload_threads: int  # the UPLOAD_THREADS it runs with (0: one per core, at most 8)
    pid: int
    log: Path


@contextmanager
def running_portal(system: System, *, upload_threads: int) -> Iterator[Portal]:
    """The portal as `make run` serves it, on the benchmark's installation, until the block ends."""
    port = _free_port()
    log = system.var_dir / f"portal-{port}.log"
    env = {
        **os.environ,
        **system.env,
        "PYTHONPATH": str(REPO),
        "UPLOAD_THREADS": str(upload_threads),
        "ALLOWED_HOSTS": "127.0.0.1",
        # Plain HTTP on the loopback: DEBUG off would otherwise redirect to HTTPS.
        "SECURE_SSL_REDIRECT": "false",
        "API_THROTTLE_RATE": "100000/minute",
    }
    command = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_portal(base, process, log)
        yield Portal(base_url=base, upload_threads=upload_threads, pid=process.pid, log=log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _wait_for_portal(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + PORTAL_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the portal stopped: {log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5):  # noqa: S310 (loopback)
                return
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.3)
    raise RuntimeError(f"the portal did not answer in time: {log.read_text(errors='replace')}")


def api_token(system: System) -> str:
    """An integrator token of the benchmark's lab (`manage.py issue_token`, in this process)."""
    from django.core.management import call_command

    from webportal.cases.models import Case

    lab = Case.objects.select_related("lab").get(pk=system.case_id).lab
    out = io.StringIO()
    call_command("issue_token", lab=lab.slug, username="bench-integrator", stdout=out)
    return out.getvalue().strip()


def api_upload(
    portal: Portal, *, token: str, case_id: int, files: Sequence[UploadFile]
) -> dict[str, Any]:
    """One API upload of `files`, timed from the request's first byte to the response."""
    client = Client(portal.base_url, token=token, timeout=UPLOAD_TIMEOUT)
    started_at = time.time()
    start = time.perf_counter()
    batch = client.upload_batch(case_id, list(files))
    seconds = time.perf_counter() - start
    return {
        "upload_threads": portal.upload_threads,
        "files": len(files),
        "bytes": sum(len(content) for _, content in files),
        "accepted": batch["total_images"],
        "rejected": batch["rejected_files"],
        "batch_id": batch["id"],
        "started_at": started_at,
        "seconds": seconds,
        "images_per_second": batch["total_images"] / seconds if seconds > 0 else 0.0,
    }


def cancel(batch_id: int) -> None:
    """A timed upload's batch is not classified: no worker should find it queued later."""
    from webportal.cases import services

    services.cancel_batch(batch_id=batch_id)


def time_upload(
    portal: Portal, *, token: str, case_id: int, files: Sequence[UploadFile]
) -> dict[str, Any]:
    """`api_upload`, with the machine's load beside it; the batch is then cancelled."""
    cpu: dict[str, float] = {}
    with metered(cpu, [portal.pid]):
        run = api_upload(portal, token=token, case_id=case_id, files=files)
    cancel(run["batch_id"])
    return {**run, "cpu": cpu}


def time_to_report(
    system: System,
    portal: Portal,
    *,
    token: str,
    files: Sequence[UploadFile],
    workers: int,
) -> dict[str, Any]:
    """Seconds from the upload's first byte to its report, with `workers` ready workers.

    One API upload of `files` into the benchmark's case; the workers are started (model loaded,
    warmed up) before the clock starts. The end is the batch's `finished_at`, which the worker
    writes with the report; the report is checked to exist.
    """
    from webportal.cases.models import Batch
    from webportal.reports.models import Report

    cpu: dict[str, float] = {}
    with (
        running_workers(system, workers) as processes,
        metered(cpu, [portal.pid, *(w.pid for w in processes)]),
    ):
        upload = api_upload(portal, token=token, case_id=system.case_id, files=files)
        batch_id = upload["batch_id"]
        _wait_until_finished(batch_id)
    batch = Batch.objects.get(pk=batch_id)
    if batch.status != Batch.Status.DONE or batch.finished_at is None:
        raise RuntimeError(f"batch {batch_id} ended {batch.status}: {batch.error}")
    if not Report.objects.filter(batch=batch).exists():
        raise RuntimeError(f"batch {batch_id} is done without a report")
    seconds = batch.finished_at.timestamp() - upload["started_at"]
    return {
        "workers": workers,
        "images": upload["accepted"],
        "upload_seconds": upload["seconds"],
        "time_to_report_seconds": seconds,
        "upload_to_report_images_per_second": upload["accepted"] / seconds,
        "batch_id": batch_id,
        "upload_threads": portal.upload_threads,
        "cpu": cpu,
    }


def _wait_until_finished(batch_id: int) -> None:
    from webportal.cases.models import Batch

    deadline = time.monotonic() + BATCH_TIMEOUT
    while time.monotonic() < deadline:
        status = Batch.objects.values_list("status", flat=True).get(pk=batch_id)
        if status in {"done", "failed", "cancelled"}:
            return
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"batch {batch_id} not finished after {BATCH_TIMEOUT:.0f}s")


def profile_upload(system: System, files: Sequence[UploadFile], *, top: int = 25) -> dict[str, Any]:
    """cProfile of the upload service on `files`, serial, in this process; the stored files are
    deleted afterwards. Returns the `top` functions by own time, and by cumulative time."""
    from webportal.cases import registry, services
    from webportal.cases.models import Case

    case = Case.objects.select_related("lab").get(pk=system.case_id)
    model_version = registry.active_model_for(lab=case.lab)
    streams = [(name, io.BytesIO(content)) for name, content in files]
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    with _settings(UPLOAD_THREADS=1):
        prepared = services.prepare_upload(model_version=model_version, files=streams)
    profiler.disable()
    seconds = time.perf_counter() - start
    prepared.discard()
    stats = pstats.Stats(profiler)
    return {
        "files": len(files),
        "seconds": seconds,
        "images_per_second": len(files) / seconds if seconds > 0 else 0.0,
        "by_own_time": _top(stats, "tottime", top),
        "by_cumulative_time": _top(stats, "cumulative", top),
    }


@contextmanager
def _settings(**values: Any) -> Iterator[None]:
    from django.test import override_settings

    with override_settings(**values):
        yield


def _top(stats: pstats.Stats, key: str, count: int) -> list[dict[str, Any]]:
    # pstats keeps (calls, primitive calls, own time, cumulative time, callers) per function.
    rows = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][2 if key == "tottime" else 3],
        reverse=True,
    )
    return [
        {
            "function": f"{Path(filename).name}:{line}({name})",
            "calls": calls,
            "own_seconds": round(own, 4),
            "cumulative_seconds": round(cumulative, 4),
        }
        for (filename, line, name), (_, calls, own, cumulative, _) in rows[:count]
    ]


def summary(upload: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = ["== upload through the API (portal: manage.py runserver) =="]
    for run in upload["upload_runs"]:
        lines.append(
            f"{' *' if run.get('used') else '  '} UPLOAD_THREADS={run['upload_threads']}: "
            f"{run['accepted']} images in {run['seconds']:.2f}s -> "
            f"{run['images_per_second']:.1f} images/s"
            f"  [other processes: {run['cpu'].get('other_cores', 0.0):.2f} cores]"
        )
    for run in upload["time_to_report_runs"]:
        lines.append(
            f"   {run['images']} cells, {run['workers']} worker(s): upload "
            f"{run['upload_seconds']:.1f}s, first byte -> report "
            f"{run['time_to_report_seconds']:.1f}s"
            f"  [other processes: {run['cpu'].get('other_cores', 0.0):.2f} cores]"
        )
    for key in (
        "upload_images_per_second",
        "worker_images_per_second",
        "upload_vs_worker",
        "time_to_report_seconds",
    ):
        lines.append(f"  {key:<28} {upload.get(key)}")
    return "\n".join(lines)


def run(
    system: System,
    *,
    data: Path,
    model: Path,
    upload_images: int,
    report_images: int,
    upload_threads: int,
    repeats: int,
    worker_images_per_second: float | None,
    profile: bool,
) -> dict[str, Any]:
    """The upload figures of one benchmark run (`python -m bench`), as a dict for its JSON.

    Each repeat uploads the held-out cells once through a portal with UPLOAD_THREADS=1 (every
    image in the request's thread, as before issue 23) and once through one with
    `upload_threads`, in turn; the fastest run of each setting counts. Then `report_images`
    cells go from upload to report with one worker and with two.
    """
    from bench.data import pipeline_images

    samples, held_out = held_out_cells(data, model, upload_images)
    files = read_files(samples)
    token = api_token(system)
    settings = sorted({1, upload_threads})
    runs: list[dict[str, Any]] = []
    with running_portal(system, upload_threads=upload_threads) as portal:
        portals = {upload_threads: portal}
        with (
            running_portal(system, upload_threads=1) if 1 not in portals else _same(portal)
        ) as serial:
            portals[1] = serial
            for repeat in range(repeats):
                for threads in settings:
                    print(f"API upload, UPLOAD_THREADS={threads}, run {repeat + 1}...", flush=True)
                    runs.append(
                        time_upload(
                            portals[threads], token=token, case_id=system.case_id, files=files
                        )
                    )
        to_report: list[dict[str, Any]] = []
        if report_images:
            cells = read_files(pipeline_images(data, report_images))
            for workers in (1, 2):
                print(f"{report_images} cells to report, {workers} worker(s)...", flush=True)
                to_report.append(
                    time_to_report(system, portal, token=token, files=cells, workers=workers)
                )
    best = {
        threads: max(
            (r for r in runs if r["upload_threads"] == threads),
            key=lambda r: float(r["images_per_second"]),
        )
        for threads in settings
    }
    for run_ in runs:
        run_["used"] = run_ is best[run_["upload_threads"]]
    chosen = best[upload_threads]["images_per_second"]
    result: dict[str, Any] = {
        "upload_images_per_second": chosen,
        "upload_images_per_second_serial": best[1]["images_per_second"],
        "upload_threads_speedup": chosen / best[1]["images_per_second"],
        "worker_images_per_second": worker_images_per_second,
        "upload_vs_worker": (
            chosen / worker_images_per_second if worker_images_per_second else None
        ),
        "time_to_report_seconds": {
            str(run_["workers"]): run_["time_to_report_seconds"] for run_ in to_report
        },
        "upload_images": len(files),
        "upload_held_out_images": held_out,
        "report_images": report_images,
        "upload_threads": upload_threads,
        # What UPLOAD_THREADS=0 means in the portal: one per core, at most 8.
        "upload_threads_resolved": upload_threads or min(8, len(os.sched_getaffinity(0))),
        "upload_runs": runs,
        "time_to_report_runs": to_report,
    }
    if profile:
        print("profiling the upload service in-process...", flush=True)
        result["upload_profile"] = profile_upload(system, files)
    return result


@contextmanager
def _same(portal: Portal) -> Iterator[Portal]:
    yield portal
