"""The benchmark report from given raw timings: contract keys, ratios, engine choice, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.data import interleaved, stratified_subset
from bench.report import (
    CONTRACT_KEYS,
    EngineRun,
    ModelRun,
    PipelineRun,
    build_report,
    choose_engine,
    format_summary,
    write_json,
)

MODEL_RUNS = [
    ModelRun(threads=1, batch_size=32, images=64, batch_seconds=[1.0, 1.0]),  # 32 images/s
    ModelRun(threads=2, batch_size=32, images=64, batch_seconds=[0.5, 0.5]),  # 64 images/s
]
# The worker's engine beside eager: the raw-model figure is the engine's.
ENGINE_MODEL_RUNS = [
    ModelRun(threads=1, batch_size=32, images=64, batch_seconds=[2.0, 2.0]),  # eager: 16/s
    ModelRun(
        threads=1, batch_size=32, images=64, batch_seconds=[0.5, 0.5], engine="ort-fp32"
    ),  # 64 images/s
]
PIPELINE_RUNS = [
    PipelineRun(
        workers=1,
        batches=1,
        images=64,
        upload_seconds=3.0,
        upload_store_seconds=1.0,
        queue_to_done_seconds=2.5,  # 25.6 images/s
        queue_to_claim_seconds=0.5,
    ),
    PipelineRun(
        workers=2,
        batches=2,
        images=64,
        upload_seconds=3.0,
        queue_to_done_seconds=1.6,  # 40 images/s
        queue_to_claim_seconds=0.1,
    ),
]


def engine(name: str, *, seconds: float, correct: int, images: int = 1000) -> EngineRun:
    return EngineRun(
        engine=name,
        threads=1,
        batch_size=100,
        images=images,
        timed_images=images,
        batch_seconds=[seconds / (images // 100)] * (images // 100),  # batches of 100
        build_seconds=1.0,
        correct=correct,
        agree_with_baseline=images,
    )


ENGINE_RUNS = [
    engine("eager", seconds=50.0, correct=980),  # 20 images/s, 98.0%
    engine("ort-fp32", seconds=10.0, correct=980),  # 100 images/s, same accuracy
    engine("ort-int8", seconds=5.0, correct=975),  # 200 images/s, 0.5 points lower: too much
    engine("fx-int8", seconds=8.0, correct=978),  # 125 images/s, 0.2 points lower: allowed
]


def report(**overrides):
    kwargs = {
        "model_runs": MODEL_RUNS,
        "pipeline_runs": PIPELINE_RUNS,
        "engine_runs": ENGINE_RUNS,
        "machine": {"cpu_count": 2},
        "config": {"images": 64},
        **overrides,
    }
    return build_report(**kwargs)


def test_report_has_every_contract_key_with_ratios_consistent_with_the_raw_figures():
    out = report()

    assert set(CONTRACT_KEYS) <= set(out)
    assert out["model_images_per_second"] == pytest.approx(32.0)
    assert out["pipeline_images_per_second"] == pytest.approx(25.6)
    assert out["pipeline_vs_model"] == pytest.approx(25.6 / 32.0)
    assert out["two_vs_one_worker"] == pytest.approx(40.0 / 25.6)
    # fx-int8 wins: ort-int8 is faster but loses more than 0.2 points.
    assert out["engine_winner"] == "fx-int8"
    assert out["engine_speedup"] == pytest.approx(125.0 / 20.0)
    assert out["engine_accuracy_delta"] == pytest.approx(-0.002)
    assert out["meets_targets"] == {
        "pipeline_vs_model": False,
        "pipeline_vs_eager": False,
        "two_vs_one_worker": False,
        "engine_accuracy_delta": True,
    }
    assert out["worker_engine"] == "eager"
    assert out["pipeline_vs_eager"] == pytest.approx(25.6 / 32.0)


def test_the_raw_model_figure_is_the_workers_engine_and_eager_is_the_baseline():
    out = report(model_runs=ENGINE_MODEL_RUNS)

    assert out["worker_engine"] == "ort-fp32"
    assert out["model_images_per_second"] == pytest.approx(64.0)
    assert out["pipeline_vs_model"] == pytest.approx(25.6 / 64.0)
    assert out["pipeline_vs_eager"] == pytest.approx(25.6 / 16.0)
    assert out["per_repeat"]["pipeline_vs_model"] == [pytest.approx(25.6 / 64.0)]


def test_raw_runs_are_kept_with_their_derived_figures():
    out = report()

    one_worker = out["pipeline_runs"][0]
    assert one_worker["total_seconds"] == pytest.approx(5.5)
    assert one_worker["upload_store_seconds"] == 1.0
    assert out["model_runs"][1]["images_per_second"] == pytest.approx(64.0)
    assert out["model_runs"][0]["batch_seconds"] == [1.0, 1.0]
    assert [run["engine"] for run in out["engine_runs"]] == [r.engine for r in ENGINE_RUNS]
    assert out["engine_runs"][2]["accuracy"] == pytest.approx(0.975)
    assert out["machine"] == {"cpu_count": 2}


def test_contract_keys_are_none_for_a_benchmark_not_run():
    out = report(pipeline_runs=[], engine_runs=[])

    assert out["model_images_per_second"] == pytest.approx(32.0)
    for key in CONTRACT_KEYS[1:]:
        assert out[key] is None
    assert out["meets_targets"]["two_vs_one_worker"] is None
    assert "n/a" in format_summary(out)


def test_the_fastest_run_of_each_setting_is_used_and_marked():
    slower = ModelRun(threads=1, batch_size=32, images=64, batch_seconds=[2.0, 2.0])
    disturbed = PipelineRun(
        workers=1,
        batches=1,
        images=64,
        upload_seconds=3.0,
        queue_to_done_seconds=5.0,
        queue_to_claim_seconds=0.5,
    )

    out = report(model_runs=[slower, *MODEL_RUNS], pipeline_runs=[*PIPELINE_RUNS[:1], disturbed])

    assert out["model_images_per_second"] == pytest.approx(32.0)
    assert out["pipeline_images_per_second"] == pytest.approx(25.6)
    assert [run["used"] for run in out["model_runs"]] == [False, True, True]
    assert [run["used"] for run in out["pipeline_runs"]] == [True, False]
    assert out["two_vs_one_worker"] is None  # no two-worker run given


def test_engine_speed_is_the_median_batch_rate_so_one_disturbed_batch_does_not_count():
    steady = engine("x", seconds=1.0, correct=1, images=300)  # 3 batches of 100 in 1/3 s each
    disturbed = EngineRun(**{**steady.__dict__, "batch_seconds": [1 / 3, 1 / 3, 30.0]})

    assert disturbed.images_per_second == pytest.approx(steady.images_per_second)
    assert disturbed.mean_images_per_second < steady.mean_images_per_second


def test_choose_engine_falls_back_to_eager_when_nothing_else_is_accurate_enough():
    runs = [engine("eager", seconds=50.0, correct=980), engine("x", seconds=1.0, correct=900)]

    assert choose_engine(runs).engine == "eager"


def test_json_round_trips_and_summary_names_every_key(tmp_path: Path):
    out = report()
    path = tmp_path / "sub" / "bench.json"

    write_json(out, path)

    loaded = json.loads(path.read_text())
    for key in CONTRACT_KEYS:
        assert loaded[key] == pytest.approx(out[key])
        assert key in format_summary(out)


def test_interleaved_order_covers_every_class_first_and_is_stable():
    samples = [(Path(f"{c}/{i}.jpg"), c) for c in ("b", "a") for i in range(3)]

    order = interleaved(samples)

    assert [label for _, label in order[:2]] == ["a", "b"]
    assert sorted(order) == sorted(samples)
    assert interleaved(samples) == order


def test_stratified_subset_keeps_class_proportions():
    samples = [(Path(f"a{i}"), "a") for i in range(30)] + [(Path(f"b{i}"), "b") for i in range(10)]

    subset = stratified_subset(samples, 20)

    assert sum(1 for _, label in subset if label == "a") == 15
    assert sum(1 for _, label in subset if label == "b") == 5
    assert stratified_subset(samples, 0) == samples


def test_training_split_replays_ml_train_and_refuses_groupings_it_cannot_replay(tmp_path: Path):
    from PIL import Image

    from bench.data import training_split

    for label, count in (("b", 12), ("a", 8)):
        (tmp_path / label).mkdir()
        for i in range(count):
            Image.new("RGB", (4, 4)).save(tmp_path / label / f"{i}.png")

    split = training_split(tmp_path, {"val_fraction": 0.25, "seed": 3, "group_by": "file"})

    assert len(split.val) == 5  # 2 of "a", 3 of "b": a quarter of each class
    assert not set(split.val) & set(split.train)
    assert len(split.train) + len(split.val) == 20
    assert split == training_split(tmp_path, {"val_fraction": 0.25, "seed": 3})
    with pytest.raises(ValueError, match="group_by"):
        training_split(tmp_path, {"group_by": "near-duplicate"})


def test_ratios_are_also_given_within_each_repeat():
    def pipeline_run(workers: int, seconds: float) -> PipelineRun:
        return PipelineRun(
            workers=workers,
            batches=workers,
            images=64,
            upload_seconds=1.0,
            queue_to_done_seconds=seconds,
            queue_to_claim_seconds=0.1,
        )

    model_runs = [
        ModelRun(threads=1, batch_size=32, images=64, batch_seconds=[1.0, 1.0]),  # 32/s
        ModelRun(threads=1, batch_size=32, images=64, batch_seconds=[2.0, 2.0]),  # 16/s
    ]
    pipeline_runs = [pipeline_run(1, 4.0), pipeline_run(2, 2.5), pipeline_run(1, 2.0)]

    out = report(model_runs=model_runs, pipeline_runs=pipeline_runs)

    assert out["per_repeat"]["pipeline_vs_model"] == pytest.approx([0.5, 2.0])
    assert out["per_repeat"]["two_vs_one_worker"] == pytest.approx([1.6])
    assert "two_vs_one_worker per repeat: 1.60" in format_summary(out)
