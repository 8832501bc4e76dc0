"""bench.side_by_side runs end to end on a tiny checkpoint and 4 images: the report's shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.conftest import ROOT, TinyBench

pytestmark = [pytest.mark.slow]


def test_the_side_by_side_benchmark_runs_one_and_two_processes(
    tmp_path: Path, tiny_bench: TinyBench
) -> None:
    data, model, env = tiny_bench.data, tiny_bench.model, tiny_bench.env
    out = tmp_path / "side.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.side_by_side", "--json", str(out), "--images", "4",
         "--repeats", "1", "--model", str(model), "--data", str(data)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    for name, processes in (("raw_1", 1), ("raw_2", 2), ("job_1", 1), ("job_2", 2)):
        (run,) = report["runs"][name]
        assert run["processes"] == len(run["each"]) == processes
        assert run["images"] == 4
    for run in report["runs"]["job_2"][0]["each"]:
        assert run["status"] == "done"
        assert run["images"] == 2
        assert run["forward_thread_cpu_seconds"] > 0
        assert {"forward", "open_and_decode", "save_predictions"} <= set(run["stage_seconds"])
    assert report["summary"]["raw_two_vs_one"] > 0
    assert report["summary"]["job_two_vs_one"] > 0
