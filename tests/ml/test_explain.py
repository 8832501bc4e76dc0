"""Grad-CAM on the models we ship the architecture of."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ml.explain import explain_png, grad_cam, last_conv_block
from ml.inference import Classifier
from ml.model import build_model
from ml.testing import make_tiny_checkpoint


def test_the_last_conv_block_of_mobilenet_is_its_last_feature_block() -> None:
    model = build_model("mobilenet_v2", 3, pretrained=None)
    features = model.get_submodule("features")
    assert isinstance(features, nn.Sequential)
    assert last_conv_block(model) is features[-1]


def test_grad_cam_is_a_map_of_the_input_size_in_0_to_1_hot_where_the_evidence_is() -> None:
    # One convolution, and a class score that grows with its activation: where the input has
    # signal (the top-left quarter) the class's evidence is, and Grad-CAM must be hot there.
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pooled = self.features(x).mean(dim=(2, 3))
            return torch.stack([-pooled.sum(dim=1), pooled.sum(dim=1)], dim=1)

    model = Tiny()
    conv = model.features[0]
    assert isinstance(conv, nn.Conv2d)
    with torch.no_grad():
        conv.weight.fill_(0.1)
    x = torch.zeros(1, 3, 16, 16)
    x[:, :, :8, :8] = 1.0
    cam = grad_cam(model, x, class_index=1)
    assert cam.shape == (16, 16)
    assert float(cam.min()) >= 0.0
    assert float(cam.max()) == 1.0
    assert float(cam[1:7, 1:7].min()) == 1.0  # inside the lit quarter (its rim meets padding)
    assert float(cam[10:, 10:].max()) < 0.05
    # Evidence against a class is not shown: its map is empty.
    assert float(grad_cam(model, x, class_index=0).max()) == 0.0


def test_explain_png_draws_the_heatmap_over_the_fitted_cell(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "tiny.pt", ["a", "b", "c"], input_size=32)
    classifier = Classifier.load(path, device="cpu")
    weights_before = [p.clone() for p in classifier.model.parameters()]
    png = explain_png(classifier, Image.new("RGB", (60, 50), (180, 90, 140)), "b")
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.size == (32, 32)
        assert picture.mode == "RGB"
    for before, after in zip(weights_before, classifier.model.parameters(), strict=True):
        assert torch.equal(before, after)
        assert after.grad is None


def test_explain_uses_the_eager_model_even_when_a_faster_engine_is_swapped_in(
    tmp_path: Path,
) -> None:
    path = make_tiny_checkpoint(tmp_path / "tiny.pt", ["a", "b"], input_size=32)
    classifier = Classifier.load(path, device="cpu")

    class LogitsOnly(nn.Module):  # an engine that gives no gradients
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("Grad-CAM must not run the inference engine")

    classifier.model = LogitsOnly()
    png = explain_png(classifier, Image.new("RGB", (40, 40), (150, 60, 160)), "a")
    assert png.startswith(b"\x89PNG")
