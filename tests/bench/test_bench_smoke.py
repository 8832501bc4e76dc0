"""The benchmark itself runs: `python -m bench` end to end on a tiny checkpoint and 4 images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bench.conftest import ROOT, TinyBench

pytestmark = [pytest.mark.slow, pytest.mark.worker]


def run_bench(bench: TinyBench, tmp_path: Path, *options: str) -> dict[str, Any]:
    """`python -m bench OPTIONS` on the tiny checkpoint and images; the report it wrote."""
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--json", str(out), *options,
         "--model", str(bench.model), "--data", str(bench.data),
         "--workdir", str(tmp_path / "system")],
        cwd=ROOT, env=bench.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_the_pipeline_benchmark_runs_on_a_tiny_checkpoint_with_four_images(
    tmp_path: Path, tiny_bench: TinyBench
) -> None:
    report = run_bench(
        tiny_bench, tmp_path, "--only", "pipeline", "--images", "4", "--repeats", "1",
        "--profile-images", "4",
    )  # fmt: skip
    assert report["worker_engine"] in {"ort-fp32", "fused-channels-last", "eager"}
    for key in ("pipeline_vs_model", "pipeline_vs_eager", "two_vs_one_worker"):
        assert (report[key] or 0) > 0, key
    assert {run["engine"] for run in report["model_runs"]} == {"eager", report["worker_engine"]}
    assert [run["workers"] for run in report["pipeline_runs"]] == [1, 2]
    assert all(run["images"] == 4 for run in report["pipeline_runs"])
    profile = report["worker_profile"]
    assert profile["images"] == 4
    assert profile["engine"] == report["worker_engine"]
    assert set(profile["prefetch_thread_seconds"]) == {"open_and_decode", "resize_normalise"}


def test_the_upload_benchmark_times_an_api_upload_against_one_worker(
    tmp_path: Path, tiny_bench: TinyBench
) -> None:
    report = run_bench(
        tiny_bench, tmp_path, "--only", "upload", "--images", "4", "--upload-images", "4",
        "--report-images", "4", "--repeats", "1", "--upload-threads", "2", "--profile-upload",
    )  # fmt: skip
    assert [run["workers"] for run in report["pipeline_runs"]] == [1]
    assert [run["upload_threads"] for run in report["upload_runs"]] == [1, 2]
    assert all(run["accepted"] == 4 and run["rejected"] == 0 for run in report["upload_runs"])
    assert report["upload_images_per_second"] > 0
    assert report["upload_vs_worker"] == pytest.approx(
        report["upload_images_per_second"] / report["pipeline_images_per_second"]
    )
    assert set(report["time_to_report_seconds"]) == {"1", "2"}
    for run in report["time_to_report_runs"]:
        assert run["images"] == 4
        assert run["time_to_report_seconds"] > run["upload_seconds"] > 0
    assert report["upload_profile"]["files"] == 4
    assert "load_average_at_start" in report["machine"]


def test_the_shards_benchmark_times_one_batch_with_one_worker_and_with_two(
    tmp_path: Path, tiny_bench: TinyBench
) -> None:
    report = run_bench(
        tiny_bench, tmp_path, "--only", "shards", "--shard-cells", "4", "--shard-size", "1",
        "--repeats", "1",
    )  # fmt: skip
    assert [run["workers"] for run in report["shard_runs"]] == [1, 2]
    assert all(run["shards"] == 4 and run["images"] == 4 for run in report["shard_runs"])
    seconds = report["shard_time_to_report_seconds"]
    assert report["shard_two_vs_one"] == pytest.approx(seconds["1"] / seconds["2"])
    one, two = report["shard_runs"]
    assert len(one["claims_per_worker"]) == 1
    assert sum(two["claims_per_worker"].values()) == 4


def test_the_fair_share_benchmark_gives_each_small_batch_its_wait_and_stat_its_position(
    tmp_path: Path, tiny_bench: TinyBench
) -> None:
    report = run_bench(
        tiny_bench, tmp_path, "--only", "fair_share", "--fair-big-cells", "12", "--fair-unique",
        "4", "--fair-small-cells", "2", "--fair-labs", "3", "--fair-workers", "1", "--shard-size",
        "4",
    )  # fmt: skip
    assert report["fair_big_shards"] == 3
    assert [run["cells"] for run in report["fair_small_batches"]] == [2, 2]
    assert report["fair_shard_seconds"] > 0
    # One worker, busy on the big batch's first shard when the others arrive: every later
    # claim goes to STAT first, then the labs never served, before the big batch again.
    assert report["fair_stat_position"] == 1
    assert report["fair_small_big_shards_claimed_meanwhile_max"] == 0
