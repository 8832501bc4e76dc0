"""Grad-CAM on the models we ship the architecture of."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ml.explain import explain_png, grad_cam, last_conv_block, overlay, upsample
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


def test_aligned_upsampling_puts_each_coarse_cell_over_the_centre_of_its_receptive_field() -> None:
    # Where MobileNetV2 computed feature (4, 4) of block 6 (stride 8) on a 64 square: the input
    # pixels its gradient reaches. Their centre is 8 * 4 = 32, and the aligned upsampling must
    # put that cell's value there; align_corners=False puts it half a cell lower and righter.
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 3, pretrained=None).eval()
    block = model.get_submodule("features.6")
    stored: list[torch.Tensor] = []
    handle = block.register_forward_hook(lambda _m, _i, out: stored.append(out))
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    model(x)
    handle.remove()
    assert stored[0].shape[-1] == 8
    (gradient,) = torch.autograd.grad(stored[0][0, :, 4, 4].sum(), x)
    reached = gradient[0].abs().sum(dim=0).nonzero()
    rows, cols = reached[:, 0], reached[:, 1]
    assert (int(rows.min()) + int(rows.max())) / 2 == 32
    assert (int(cols.min()) + int(cols.max())) / 2 == 32

    one_cell = torch.zeros(8, 8)
    one_cell[4, 4] = 1.0
    aligned = upsample(one_cell, 64, aligned=True)
    assert aligned.shape == (64, 64)
    assert divmod(int(aligned.argmax()), 64) == (32, 32)
    assert float(aligned[32, 32]) == 1.0
    shifted = upsample(one_cell, 64, aligned=False)
    assert torch.equal(
        shifted,
        nn.functional.interpolate(one_cell[None, None], size=(64, 64), mode="bilinear")[0, 0],
    )
    peak_row, _ = divmod(int(shifted.argmax()), 64)
    assert peak_row in (35, 36)  # 8 * 4 + 3.5: half a cell off


def test_the_aligned_map_is_held_flat_beyond_the_last_coarse_cell() -> None:
    ramp = torch.arange(16.0).reshape(4, 4)
    full = upsample(ramp, 32, aligned=True)
    assert float(full[0, 0]) == 0.0
    assert float(full[24, 24]) == float(ramp[3, 3])
    assert torch.equal(full[24:, 24:], torch.full((8, 8), float(ramp[3, 3])))


def test_explain_png_of_a_picture_already_fitted_is_drawn_over_that_same_picture(
    tmp_path: Path,
) -> None:
    # The portal hands the copy fitted at upload (fitted=True): it is the input square itself,
    # and the PNG is the overlay of the Grad-CAM computed on it, pixel for pixel.
    path = make_tiny_checkpoint(tmp_path / "tiny.pt", ["a", "b"], input_size=32, resize="stain")
    classifier = Classifier.load(path, device="cpu")
    # Pink with a violet nucleus in a corner: the "stain" geometry centres a square on it.
    square = Image.new("RGB", (32, 32), (230, 200, 205))
    ImageDraw.Draw(square).ellipse((2, 2, 12, 12), fill=(90, 40, 150))
    png = explain_png(classifier, square, "b", fitted=True)
    cam = grad_cam(classifier.eager, classifier.to_input(square)[None], 1)
    with Image.open(io.BytesIO(png)) as drawn:
        assert np.array_equal(np.asarray(drawn), np.asarray(overlay(square, cam)))
    # Fitted again, the "stain" geometry would crop it anew: a different picture.
    refitted = classifier.fit_to_input(square)
    assert not np.array_equal(np.asarray(refitted), np.asarray(square))
