"""bench.cuda: stops at once without CUDA; with a CPU standing in, writes its figures as it goes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import cuda
from tests.bench.conftest import ROOT, TinyBench


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def stand_in(tiny: TinyBench, out: Path, *extra: str) -> list[str]:
    """Arguments for a quick run on the CPU, on the tiny checkpoint and its four cells."""
    return [
        "--device", "cpu", "--json", str(out), "--model", str(tiny.model), "--data",
        str(tiny.data), "--batch-sizes", "2", "--seconds-per-setting", "0.01",
        "--agreement-images", "4", *extra,
    ]  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_says_so_and_exits_non_zero_writing_nothing(
    tiny_bench: TinyBench, tmp_path: Path
) -> None:
    out = tmp_path / "cuda.json"
    results_before = sorted((ROOT / "bench" / "results").iterdir())
    done = subprocess.run(
        [sys.executable, "-m", "bench.cuda", "--json", str(out), "--model", str(tiny_bench.model)],
        cwd=ROOT, env=tiny_bench.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == cuda.NO_CUDA_EXIT != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("no CUDA device: "), done.stderr
    assert done.stdout == ""
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()
    assert sorted((ROOT / "bench" / "results").iterdir()) == results_before


def test_a_cpu_stand_in_writes_every_setting_the_engine_choice_and_the_agreement(
    tiny_bench: TinyBench, tmp_path: Path
) -> None:
    out = tmp_path / "cuda.json"
    argv = stand_in(tiny_bench, out, "--parts", "model,engine", "--batch-sizes", "2,4")
    assert cuda.run(argv) == 0
    data = read(out)
    assert data["finished"] is True
    assert data["machine"]["gpu"] is None
    assert data["config"]["device"] == "cpu"
    runs = data["model"]["runs"]
    settings = set(data["model"]["settings"])
    assert {(r["setting"], r["batch_size"]) for r in runs} == {
        (name, size) for name in settings for size in (2, 4)
    }
    assert "worker-predict-logits" in settings
    assert "fp32-channels-last" in settings
    for run in runs:
        assert run["images_per_second"] == pytest.approx(
            run["batch_size"] * run["iterations"] / run["seconds"]
        )
    choice = data["engine"]["choose_engine"]
    assert choice["winner"] in {"ort-fp32", "fused-channels-last", "eager"}
    assert choice["check_images"] == 16  # the cells shipped in ml/check_cells
    fp32 = data["engine"]["agreement_data_fp32"]
    assert fp32["images"] == 4
    assert fp32["same_top_class"] == 4
    assert fp32["within_engine_limit"]
    assert "pipeline" not in data
    assert cuda.summary(data)["engine_winner"] == choice["winner"]


def test_a_failing_part_keeps_the_figures_before_it_and_exits_non_zero(
    tiny_bench: TinyBench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(cuda, "measure_engine", broken)
    out = tmp_path / "cuda.json"
    assert cuda.run(stand_in(tiny_bench, out, "--parts", "model,engine")) == 1
    data = read(out)
    assert len(data["model"]["runs"]) == len(data["model"]["settings"])
    assert data["engine"]["error"] == "RuntimeError: the engine broke"
    assert data["finished"] is True
    assert cuda.summary(data)["errors"] == {"engine": "RuntimeError: the engine broke"}


def test_a_run_stopped_by_timeout_midway_leaves_what_it_measured_on_disk(
    tiny_bench: TinyBench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = cuda.time_setting
    calls = []

    def terminated_on_the_third(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` sends
        return measured(*args, **kwargs)

    monkeypatch.setattr(cuda, "time_setting", terminated_on_the_third)
    out = tmp_path / "cuda.json"
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        cuda.run(stand_in(tiny_bench, out, "--parts", "model,engine"))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
    data = read(out)
    assert data["finished"] is False
    assert len(data["model"]["runs"]) == 2
    assert "engine" not in data


def test_a_spent_budget_skips_the_parts_and_says_so(tiny_bench: TinyBench, tmp_path: Path) -> None:
    out = tmp_path / "cuda.json"
    assert cuda.run(stand_in(tiny_bench, out, "--budget", "5")) == 0
    data = read(out)
    assert data["finished"] is True
    assert {part: data[part]["skipped"] for part in cuda.PARTS} == dict.fromkeys(
        cuda.PARTS, "time budget spent"
    )


def test_the_budget_counts_down_from_the_start_less_the_reserve() -> None:
    now = [100.0]
    budget = cuda.Budget(60.0, clock=lambda: now[0])
    assert budget.left() == pytest.approx(60.0 - cuda.RESERVE_SECONDS)
    now[0] += 30.0
    assert budget.allows(30.0 - cuda.RESERVE_SECONDS)
    assert not budget.allows(31.0 - cuda.RESERVE_SECONDS)


def test_a_small_folder_becomes_as_many_distinct_files_as_asked(
    tiny_bench: TinyBench, tmp_path: Path
) -> None:
    samples = cuda.cells(tiny_bench.data)
    files = cuda.distinct_files(samples, 11, tmp_path / "copies")
    assert len(files) == 11
    assert files[: len(samples)] == samples
    digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in files}
    assert len(digests) == 11  # an upload would refuse a repeated file
    assert [label for _, label in files[len(samples) :]] == [
        samples[i % len(samples)][1] for i in range(len(samples), 11)
    ]


def test_a_flat_folder_of_cells_takes_the_class_from_the_name(tmp_path: Path) -> None:
    found = cuda.cells(ROOT / "ml" / "check_cells")
    assert len(found) == 16
    assert {label for _, label in found} == {
        path.name.split("-", 1)[0] for path in (ROOT / "ml" / "check_cells").glob("*.jpg")
    }


def test_prepare_cells_copies_a_folder_that_can_travel(
    tiny_bench: TinyBench, tmp_path: Path
) -> None:
    folder = tmp_path / "travel"
    argv = ["--data", str(tiny_bench.data), "--prepare-cells", str(folder), "--images", "3"]
    assert cuda.run(argv) == 0
    copied = sorted(p.relative_to(folder).parts[0] for p in folder.rglob("*.jpg"))
    assert len(copied) == 3
    assert set(copied) == {"lymphocyte", "neutrophil"}


def test_the_worker_device_is_read_from_its_log(tmp_path: Path) -> None:
    (tmp_path / "worker-1-0-abc.log").write_text(
        "INFO loaded bench (sha) on cuda:0 (engine eager)\nready.\n"
    )
    assert cuda.worker_device(tmp_path) == "cuda:0"
    assert cuda.worker_device(tmp_path / "none") is None


def test_the_summary_sets_the_pipeline_against_the_workers_call_at_its_chunk() -> None:
    data = {
        "machine": {"gpu": "a GPU"},
        "model": {
            "runs": [
                {"setting": "worker-predict-logits", "batch_size": 256, "images_per_second": 800.0},
                {"setting": "fp32-nchw", "batch_size": 256, "images_per_second": 1000.0},
            ]
        },
        "pipeline": {"runs": [{"chunk_size": 256, "images_per_second": 600.0}]},
    }
    got = cuda.summary(data)
    assert got["pipeline_vs_worker_call"] == {256: 600.0 / 800.0}
    assert got["best_model_setting"]["setting"] == "fp32-nchw"
