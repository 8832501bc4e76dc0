from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ml.explain_check import (
    blocks_of,
    cell_masks,
    centred_blob,
    grad_cams,
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
    assert set(maps[0]) == {"gradcam", "hirescam", "gradcampp", "gradcam_logp"}
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
