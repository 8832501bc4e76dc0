"""One large batch with one worker and with two: does a sharded batch use every worker? (issue 23)

    .venv/bin/python -m bench --json var/shards.json --only shards [--shard-cells 2000]
        [--shard-size 256] [--repeats 3]

`shard_cells` held-out PBC cells (bench.upload_speed.held_out_cells: the model's validation
split, topped up from its training split when smaller) go through the API of a running portal
(`make run`'s runserver) as ONE batch, and are timed from the upload's first byte to the
batch's report (`bench.upload_speed.time_to_report`) with one ready worker and with two; each
repeat runs both, in turn, and the fastest run of each counts. The portal splits the batch into
shards of `--shard-size` images (BATCH_SHARD_IMAGES; default: the setting's default), one
message each; each worker claims shards in the database.

Figures (the bench JSON's top level):
- `shard_time_to_report_seconds`: {"1": s, "2": s} for the one batch.
- `shard_two_vs_one`: one worker's time over two workers' (goal >= 1.7). The upload's own
  seconds are inside both times (the clock starts at its first byte), so the ratio is below
  the workers' speed-up alone; `shard_classify_two_vs_one` gives the same ratio from the end
  of the upload to the report.
- per run: the shards, and how many each worker process claimed (`claims_per_worker`): both
  workers must appear for the batch to have been shared.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.pipeline import System
from bench.upload_speed import api_token, held_out_cells, read_files, running_portal, time_to_report


def run(
    system: System,
    *,
    data: Path,
    model: Path,
    cells: int,
    shard_size: int | None,
    repeats: int,
) -> dict[str, Any]:
    """The sharded-batch figures of one benchmark run, as a dict for its JSON."""
    samples, held_out = held_out_cells(data, model, cells)
    files = read_files(samples)
    token = api_token(system)
    if shard_size is not None:
        # The portal splits the batch at the upload: it reads the setting from its environment.
        system = replace(system, env={**system.env, "BATCH_SHARD_IMAGES": str(shard_size)})
    runs: list[dict[str, Any]] = []
    with running_portal(system, upload_threads=0) as portal:
        for repeat in range(repeats):
            for workers in (1, 2):
                print(
                    f"{len(files)} cells in one batch to report, {workers} worker(s), "
                    f"run {repeat + 1}...",
                    flush=True,
                )
                timed = time_to_report(system, portal, token=token, files=files, workers=workers)
                runs.append({**timed, **_shard_facts(timed["batch_id"])})
    best = {
        workers: min(
            (r for r in runs if r["workers"] == workers),
            key=lambda r: float(r["time_to_report_seconds"]),
        )
        for workers in (1, 2)
    }
    for run_ in runs:
        run_["used"] = run_ is best[run_["workers"]]
    one, two = best[1], best[2]
    return {
        "shard_cells": len(files),
        "shard_held_out_cells": held_out,
        "shard_size": one["shard_size"],
        "shard_time_to_report_seconds": {
            "1": one["time_to_report_seconds"],
            "2": two["time_to_report_seconds"],
        },
        "shard_two_vs_one": one["time_to_report_seconds"] / two["time_to_report_seconds"],
        "shard_classify_two_vs_one": _classify_seconds(one) / _classify_seconds(two),
        "shard_runs": runs,
        "shard_command": " ".join(sys.argv),
    }


def _classify_seconds(run_: dict[str, Any]) -> float:
    return float(run_["time_to_report_seconds"]) - float(run_["upload_seconds"])


def _shard_facts(batch_id: int) -> dict[str, Any]:
    """How the batch was split and who claimed its shards (the last claimer of each)."""
    from webportal.cases.models import Shard

    shards = list(Shard.objects.filter(batch_id=batch_id))
    claims = Counter(shard.claimed_by for shard in shards)
    return {
        "shards": len(shards),
        "shard_size": max((shard.images for shard in shards), default=0),
        "claims_per_worker": dict(sorted(claims.items())),
    }


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [f"== one batch of {result['shard_cells']} cells, sharded =="]
    for run_ in result["shard_runs"]:
        lines.append(
            f"{' *' if run_['used'] else '  '} {run_['workers']} worker(s): "
            f"{run_['shards']} shards of <= {run_['shard_size']}, first byte -> report "
            f"{run_['time_to_report_seconds']:.1f}s (upload {run_['upload_seconds']:.1f}s), "
            f"claims per worker {sorted(run_['claims_per_worker'].values())}"
        )
    lines.append(f"  shard_two_vs_one            {result['shard_two_vs_one']:.3f}  (goal >= 1.7)")
    lines.append(f"  shard_classify_two_vs_one   {result['shard_classify_two_vs_one']:.3f}")
    return "\n".join(lines)
