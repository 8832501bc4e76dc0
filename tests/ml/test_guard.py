from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml.guard import SHIFTS, bootstrap, cached_features, features, halves, measure
from ml.inference import Classifier, PooledFeatures
from ml.ood import grouped_thresholds
from ml.sources import Cell
from ml.testing import make_tiny_checkpoint
from tests.ml.conftest import blob_image


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_each_synthetic_shift_changes_the_picture_and_keeps_its_size(name: str) -> None:
    picture = blob_image(np.random.default_rng(0), size=64)
    shifted = SHIFTS[name](picture, np.random.default_rng(1))
    assert shifted.size == picture.size
    assert shifted.mode == "RGB"
    change = np.abs(np.asarray(shifted, float) - np.asarray(picture, float)).mean()
    assert change > 1.0


def test_the_val_halves_keep_every_group_on_one_side() -> None:
    groups = np.repeat(np.arange(20), 3)
    first, second = halves(groups, seed=0)
    assert sorted([*first, *second]) == list(range(60))
    assert not set(groups[first]) & set(groups[second])
    assert len(set(groups[first])) == 10


def test_false_alarms_stay_near_the_quantile_and_a_shifted_pool_is_detected() -> None:
    rng = np.random.default_rng(0)
    scores = rng.gamma(4.0, 0.25, size=2000)  # in-lab cell scores, mean 1
    groups = np.arange(2000)
    away = {"shifted": (scores[:500] + 1.0, groups[:500])}
    report = measure((scores, groups), away, sizes=[20], quantile=0.99, draws=2000, seed=0)
    mean = report["mean"]["batch_20"]
    assert mean["false_alarm"] < 0.03
    assert mean["shifted"] == 1.0
    interval = bootstrap(scores, groups, [20], quantile=0.99, draws=2000, times=20, seed=0)[
        "batch_20"
    ]
    limit = grouped_thresholds(scores, groups, [20], rng=np.random.default_rng(0))[20]
    assert interval["p2.5"] <= limit <= interval["p97.5"]


def test_a_shift_of_a_real_size_picture_is_deterministic_for_a_seed() -> None:
    picture = Image.new("RGB", (120, 90), (200, 150, 180))
    a = SHIFTS["noise"](picture, np.random.default_rng(3))
    b = SHIFTS["noise"](picture, np.random.default_rng(3))
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_cached_features_extracts_each_chunk_once_and_keys_the_cache_by_identity(
    tmp_path: Path,
) -> None:
    classes = ["a", "b"]
    clf = Classifier.load(make_tiny_checkpoint(tmp_path / "tiny.pt", classes), device="cpu")
    cells = []
    for i in range(5):
        path = tmp_path / f"cell-{i}.png"
        blob_image(np.random.default_rng(i), size=48).save(path)
        cells.append(Cell(path=path, label=classes[i % 2], source="test", group=str(i)))
    extracted: list[int] = []

    def extract(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        extracted.append(len(batch))
        return {"mean": batch.mean(dim=(2, 3)), "max": batch.amax(dim=(2, 3))}

    def join(found: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {name: torch.cat([f[name] for f in found]) for name in found[0]}

    def run(identity: list[object]) -> dict[str, torch.Tensor]:
        return cached_features(
            clf, cells, identity=identity, extract=extract, join=join,
            shift="blur", cache=tmp_path / "cache", chunk=2, seed=0,
        )  # fmt: skip

    first = run([clf.geometry, "weights-1"])
    assert extracted == [2, 2, 1]  # three chunk files of at most 2 cells
    again = run([clf.geometry, "weights-1"])
    assert extracted == [2, 2, 1]  # read back from the cache, not extracted again
    assert all(torch.equal(first[name], again[name]) for name in ("mean", "max"))
    assert first["mean"].shape == (5, 3)
    run([clf.geometry, "weights-2"])  # other weights: another cache folder
    assert extracted == [2, 2, 1, 2, 2, 1]


def test_the_pooled_features_come_through_the_shared_cache(tmp_path: Path) -> None:
    clf = Classifier.load(make_tiny_checkpoint(tmp_path / "tiny.pt", ["a", "b"]), device="cpu")
    path = tmp_path / "cell.png"
    blob_image(np.random.default_rng(0), size=48).save(path)
    cells = [Cell(path=path, label="a", source="test", group=str(i)) for i in range(3)]
    got = features(clf, cells, shift=None, cache=tmp_path / "cache", chunk=2, seed=0)
    pooled = PooledFeatures(clf.eager.get_submodule("features")).eval()
    with torch.inference_mode():
        want = pooled(clf.preprocess([cell.open() for cell in cells]))
    assert torch.allclose(got, want, atol=1e-6)
    assert len(list((tmp_path / "cache").glob("*/chunk-*.pt"))) == 2
    assert features(clf, [], shift=None, cache=tmp_path / "cache", chunk=2, seed=0).numel() == 0
