from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ml.explain_check import (
    blocks_of,
    cell_masks,
    centred_blob,
    coarse_cams,
    fused,
    grad_cams,
    random_offset,
    randomised,
    share_inside,
    spearman,
)
from ml.model import build_model


def _cell_picture(size: int = 96) -> Image.Image:
    """Pink background with a violet nucleus off centre: what the locator's stain score finds."""
    picture = Image.new("RGB", (size, size), (230, 200, 205))
    ImageDraw.Draw(picture).ellipse((10, 12, 40, 42), fill=(90, 40, 150))
    return picture


def test_the_cell_mask_is_the_violet_nucleus_and_a_box_around_it() -> None:
    masks = cell_masks(_cell_picture())
    assert masks is not None
    nucleus, box = masks
    assert nucleus[27, 25]
    assert not nucleus[80, 80]
    assert box.sum() >= nucleus.sum()
    assert box[nucleus].all()


def test_a_picture_without_stain_has_no_mask() -> None:
    assert cell_masks(Image.new("RGB", (64, 64), (230, 200, 205))) is None


def test_the_share_inside_counts_mass_and_the_blob_sits_in_the_centre() -> None:
    blob = centred_blob(60)
    centre = np.zeros((60, 60), bool)
    centre[15:45, 15:45] = True
    share = share_inside(blob, centre)
    assert share is not None
    assert share > 0.5
    assert share_inside(np.zeros((60, 60)), centre) is None


def test_maps_of_every_method_have_the_input_size_and_randomising_changes_the_weights() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 3, pretrained=None).eval()
    x = torch.randn(1, 3, 64, 64)
    maps = grad_cams(model, x, 1, [blocks_of(model)[-1]])
    assert set(maps[0]) == {"gradcam", "hirescam", "gradcampp", "gradcam_logp", "layercam"}
    assert all(m.shape == (64, 64) for m in maps[0].values())
    other = randomised(model, 2, seed=1)
    before = model.get_parameter("classifier.1.weight")
    after = other.get_parameter("classifier.1.weight")
    assert not torch.equal(before, after)
    # The bottom of the network is untouched.
    stem = "features.0.0.weight"
    assert torch.equal(model.get_parameter(stem), other.get_parameter(stem))
    ramp = np.add.outer(np.arange(64.0), np.arange(64.0))
    assert spearman(ramp, ramp) == 1.0
    assert spearman(ramp, -ramp) == -1.0


def test_layercam_keeps_only_positive_gradients_and_fusion_lifts_weak_layers() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", 3, pretrained=None).eval()
    x = torch.randn(1, 3, 64, 64)
    features = blocks_of(model)
    coarse, predicted = coarse_cams(model, x, 1, [features[6], features[-1]])
    assert 0 <= predicted < 3
    assert coarse[0]["layercam"].shape == (8, 8)  # block 6: stride 8, finer than the last
    assert coarse[1]["layercam"].shape == (2, 2)
    assert all(float(m.min()) >= 0 for by in coarse for m in by.values())
    weak, strong = np.zeros((4, 4)), np.zeros((4, 4))
    weak[0, 0], strong[3, 3] = 0.01, 100.0
    both = fused([weak, strong])
    # Each layer counts by its own peak: the weak map's spot weighs as much as the strong one's.
    assert both[0, 0] == both[3, 3] == np.tanh(2.0)


def test_an_offset_has_the_asked_length_in_a_random_direction() -> None:
    rng = np.random.default_rng(0)
    offsets = [random_offset(192, 0.25, rng) for _ in range(50)]
    lengths = [np.hypot(dy, dx) for dy, dx in offsets]
    assert all(abs(length - 48) <= 1 for length in lengths)
    assert len(set(offsets)) > 40
