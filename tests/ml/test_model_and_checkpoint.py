from __future__ import annotations

import pytest
import torch
import torchvision

from ml.checkpoint import load_checkpoint, read_metadata, save_checkpoint, sha256_of
from ml.model import build_model, split_trunk_tail
from ml.testing import make_tiny_checkpoint


def test_build_model_loads_a_local_imagenet_file_strictly_then_replaces_the_head(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "imagenet.pth"
    torch.save(imagenet.state_dict(), path)

    model = build_model("mobilenet_v2", 5, pretrained=path)

    head, conv = model.get_submodule("classifier.1"), model.get_submodule("features.0.0")
    assert isinstance(head, torch.nn.Linear)
    assert isinstance(conv, torch.nn.Conv2d)
    assert head.out_features == 5
    assert torch.equal(conv.weight, imagenet.features[0][0].weight)


def test_build_model_rejects_a_weights_file_for_another_architecture(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError):
        build_model("mobilenet_v2", 3, pretrained=path)


def test_build_model_rejects_an_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("alexnet9000", 3)


def test_trunk_then_tail_computes_the_same_as_the_whole_model():
    model = build_model("mobilenet_v2", 4).eval()
    trunk, tail = split_trunk_tail(model, "mobilenet_v2", 14)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tail(trunk(x)), model(x), atol=1e-5)


def test_save_load_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 3).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        model,
        arch="mobilenet_v2",
        classes=["a", "b", "c"],
        input_size=48,
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        recipe={"lr": 0.001},
        metrics={"accuracy": 0.9},
        temperature=1.5,
        threshold=0.8,
    )
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta.classes == ["a", "b", "c"]
    assert (meta.input_size, meta.temperature, meta.threshold) == (48, 1.5, 0.8)
    assert meta.recipe == {"lr": 0.001}
    assert read_metadata(path) == meta
    # weights_only loading must work: only plain types are stored.
    torch.load(path, weights_only=True)


def test_make_tiny_checkpoint_is_readable_and_hashable(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "tiny.pt", ["x", "y"])
    meta = read_metadata(path)
    assert meta.classes == ["x", "y"]
    assert meta.input_size == 32
    assert meta.threshold is None
    assert meta.temperature == 1.0
    assert len(sha256_of(path)) == 64
    assert sha256_of(path) == sha256_of(path)


def test_reading_a_checkpoint_of_unknown_format_fails_clearly(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"format_version": 99}, path)
    with pytest.raises(ValueError, match="format_version"):
        read_metadata(path)
