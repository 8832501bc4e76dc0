"""Fair share between labs: a lab's big routine batch must not hold back the others (issue 23).

    .venv/bin/python -m bench --json var/fair.json --only fair_share [--fair-big-cells 10000]
        [--fair-unique 500] [--fair-small-cells 20] [--fair-labs 10] [--fair-workers 2]
        [--shard-size 256]
    # a smoke run in a minute or two:
    .venv/bin/python -m bench --json var/fair-smoke.json --only fair_share --fair-big-cells 600 \\
        --fair-unique 100 --fair-small-cells 5 --fair-labs 4 --shard-size 64

Ten labs (`--fair-labs`) on one installation (bench.pipeline.setup_system: SQLite, the
filesystem broker, real celery workers). Every upload is validated and stored before any clock
starts (`services.prepare_upload`, in this process); what is timed is the queue. The big
lab's routine batch has `--fair-big-cells` cells whose rows REUSE `--fair-unique` stored cell
files (each file stands for big/unique cells: the worker reads and classifies every row; only
the upload is skipped), so 10,000 cells are ready in seconds. With the workers ready, the big
batch is submitted; once its first shard is claimed (the workers are busy on it), each other
lab submits a `--fair-small-cells` routine batch, and then the big lab a STAT batch of the same
size. All held-out PBC cells (bench.upload_speed.held_out_cells).

Figures (the bench JSON's top level, `fair_` keys):
- `fair_shard_seconds`: the median time a worker spent on one of the big batch's shards
  (claim to done): "one chunk's time".
- per small batch: `wait_seconds` (its message sent -> its first shard claimed),
  `wait_beyond_one_shard_seconds` (that minus `fair_shard_seconds`; <= 0: within one chunk's
  time), `big_shards_claimed_meanwhile` (shards of the big batch claimed while it waited:
  the big batch overtaking it), `to_report_seconds`.
- `fair_small_wait_beyond_one_shard_seconds_max`, `fair_small_big_shards_claimed_meanwhile_max`
  (target: 0, the big batch takes no new shard before a waiting small batch).
- `fair_stat_position`: 1 + the shards of any batch claimed after the STAT batch was sent and
  before its first shard (target: 1, STAT first), and its wait.
"""

from __future__ import annotations

import io
import statistics
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.pipeline import System, running_workers
from bench.upload_speed import held_out_cells, read_files

FIRST_CLAIM_TIMEOUT = 300.0
FINISH_TIMEOUT = 3600.0


def run(
    system: System,
    *,
    data: Path,
    model: Path,
    big_cells: int,
    unique_cells: int,
    small_cells: int,
    labs: int,
    workers: int,
    shard_size: int | None,
) -> dict[str, Any]:
    """The fair-share figures of one benchmark run, as a dict for its JSON."""
    from django.conf import settings
    from django.test import override_settings

    from webportal.accounts.models import Lab
    from webportal.cases import services
    from webportal.cases.models import Batch, Case

    if labs < 2:
        raise SystemExit("--fair-labs must be at least 2 (the big lab and another)")
    size = shard_size or settings.BATCH_SHARD_IMAGES
    base = Case.objects.select_related("lab").get(pk=system.case_id)
    model_version = base.lab.active_model
    if model_version is None:
        raise RuntimeError("the benchmark's lab has no model")
    cases = [base]
    for number in range(1, labs):
        lab = Lab.objects.create(
            name=f"Lab {number}", slug=f"lab-{number}", active_model=model_version
        )
        cases.append(
            services.create_case(lab=lab, created_by=None, accession_number=f"FAIR-{number:04d}")
        )
    unique = min(unique_cells, big_cells)
    wanted = unique + labs * small_cells
    samples, held_out = held_out_cells(data, model, wanted)
    found = read_files(samples)
    if not found:
        raise SystemExit(f"no cells found in {data}")
    # A data folder with fewer cells (a smoke run's) repeats them: each is stored again.
    files = [found[i % len(found)] for i in range(wanted)]

    def prepare(part: list[tuple[str, bytes]]) -> services.PreparedUpload:
        streams = [(name, io.BytesIO(content)) for name, content in part]
        return services.prepare_upload(model_version=model_version, files=streams)

    print(f"storing {unique} + {labs} x {small_cells} cells (not timed)...", flush=True)
    stored = prepare(files[:unique])
    big = replace(stored, images=[_copy(stored.images[i % unique]) for i in range(big_cells)])
    smalls = [
        prepare(files[unique + i * small_cells : unique + (i + 1) * small_cells])
        for i in range(labs)
    ]
    with (
        override_settings(BATCH_SHARD_IMAGES=size),
        running_workers(system, workers) as processes,
    ):
        print(f"{workers} workers ready: the big batch ({big_cells} cells)...", flush=True)
        big_batch = services.submit_prepared_batch(case=cases[0], created_by=None, prepared=big)
        _wait_for_first_claim(big_batch.pk)
        small_batches = [
            services.submit_prepared_batch(case=case, created_by=None, prepared=prepared)
            for case, prepared in zip(cases[1:], smalls[1:], strict=True)
        ]
        stat_batch = services.submit_prepared_batch(
            case=cases[0], created_by=None, prepared=smalls[0], priority=Batch.Priority.STAT
        )
        print(f"{len(small_batches)} small batches and a STAT one sent; waiting...", flush=True)
        _wait_until_finished([big_batch.pk, stat_batch.pk, *(b.pk for b in small_batches)])
        del processes
    return _figures(
        big_id=big_batch.pk,
        small_ids=[b.pk for b in small_batches],
        stat_id=stat_batch.pk,
        config={
            "fair_big_cells": big_cells,
            "fair_unique_cells": unique,
            "fair_small_cells": small_cells,
            "fair_labs": labs,
            "fair_workers": workers,
            "fair_shard_size": size,
            "fair_held_out_cells": held_out,
            "fair_distinct_cells": len(found),
            "fair_command": " ".join(sys.argv),
        },
    )


def _copy(image: Any) -> Any:
    """An unsaved copy of an unsaved Image row, naming the same stored files."""
    from webportal.cases.models import Image

    values = {
        field.attname: getattr(image, field.attname)
        for field in Image._meta.concrete_fields
        if not field.primary_key
    }
    for name in ("file", "model_input"):
        values[name] = getattr(image, name).name
    return Image(**values)


def _wait_for_first_claim(batch_id: int) -> None:
    from webportal.cases.models import Shard

    deadline = time.monotonic() + FIRST_CLAIM_TIMEOUT
    while time.monotonic() < deadline:
        if Shard.objects.filter(batch_id=batch_id, claimed_at__isnull=False).exists():
            return
        time.sleep(0.02)
    raise RuntimeError(f"no shard of batch {batch_id} claimed in {FIRST_CLAIM_TIMEOUT:.0f}s")


def _wait_until_finished(batch_ids: list[int]) -> None:
    from webportal.cases.models import Batch

    deadline = time.monotonic() + FINISH_TIMEOUT
    while time.monotonic() < deadline:
        statuses = Batch.objects.filter(pk__in=batch_ids).values_list("status", flat=True)
        if all(status in {"done", "failed", "cancelled"} for status in statuses):
            failed = Batch.objects.filter(pk__in=batch_ids).exclude(status="done")
            if failed.exists():
                raise RuntimeError(f"batches not done: {list(failed.values('pk', 'error'))}")
            return
        time.sleep(0.1)
    raise RuntimeError(f"batches not finished after {FINISH_TIMEOUT:.0f}s")


def _figures(
    *, big_id: int, small_ids: list[int], stat_id: int, config: dict[str, Any]
) -> dict[str, Any]:
    from webportal.cases.models import Batch, Shard

    # (batch, claimed, finished) of every shard claimed in the run.
    claims: list[tuple[int, datetime, datetime | None]] = [
        (batch_id, claimed, finished)
        for batch_id, claimed, finished in Shard.objects.filter(
            claimed_at__isnull=False
        ).values_list("batch_id", "claimed_at", "finished_at")
        if claimed is not None
    ]
    big_claims = [claimed for batch_id, claimed, _ in claims if batch_id == big_id]
    shard_seconds = statistics.median(
        (finished - claimed).total_seconds()
        for batch_id, claimed, finished in claims
        if batch_id == big_id and finished is not None
    )

    def claimed_between(moments: list[datetime], after: datetime, before: datetime) -> int:
        return sum(after < moment < before for moment in moments)

    every_claim = [claimed for _, claimed, _ in claims]

    def timing(batch_id: int) -> dict[str, Any]:
        batch = Batch.objects.get(pk=batch_id)
        sent = batch.enqueued_at or batch.created_at
        first = min(claimed for b, claimed, _ in claims if b == batch_id)
        if batch.finished_at is None:
            raise RuntimeError(f"batch {batch_id} has no finish time")
        return {
            "batch_id": batch_id,
            "cells": batch.total_images,
            "wait_seconds": (first - sent).total_seconds(),
            "wait_beyond_one_shard_seconds": (first - sent).total_seconds() - shard_seconds,
            "big_shards_claimed_meanwhile": claimed_between(big_claims, sent, first),
            "shards_claimed_meanwhile": claimed_between(every_claim, sent, first),
            "to_report_seconds": (batch.finished_at - sent).total_seconds(),
        }

    small = [timing(batch_id) for batch_id in small_ids]
    stat = timing(stat_id)
    big = timing(big_id)
    return {
        **config,
        "fair_shard_seconds": shard_seconds,
        "fair_big_shards": len(big_claims),
        "fair_big_seconds": big["to_report_seconds"],
        "fair_small_batches": small,
        "fair_small_wait_seconds_max": max(run["wait_seconds"] for run in small),
        "fair_small_wait_beyond_one_shard_seconds_max": max(
            run["wait_beyond_one_shard_seconds"] for run in small
        ),
        "fair_small_big_shards_claimed_meanwhile_max": max(
            run["big_shards_claimed_meanwhile"] for run in small
        ),
        "fair_small_to_report_seconds_max": max(run["to_report_seconds"] for run in small),
        "fair_stat": stat,
        "fair_stat_position": 1 + stat["shards_claimed_meanwhile"],
    }


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [
        f"== fair share: {result['fair_labs']} labs, {result['fair_workers']} workers, shards "
        f"of {result['fair_shard_size']} ==",
        f"  big batch: {result['fair_big_cells']} cells in {result['fair_big_shards']} shards, "
        f"{result['fair_big_seconds']:.1f}s; one shard {result['fair_shard_seconds']:.2f}s",
    ]
    for run_ in result["fair_small_batches"]:
        lines.append(
            f"  small batch {run_['batch_id']}: waited {run_['wait_seconds']:.2f}s "
            f"({run_['wait_beyond_one_shard_seconds']:+.2f}s beyond one shard), "
            f"big shards claimed meanwhile {run_['big_shards_claimed_meanwhile']}, "
            f"report after {run_['to_report_seconds']:.2f}s"
        )
    stat = result["fair_stat"]
    lines.append(
        f"  STAT: position {result['fair_stat_position']}, waited {stat['wait_seconds']:.2f}s, "
        f"report after {stat['to_report_seconds']:.2f}s"
    )
    return "\n".join(lines)
