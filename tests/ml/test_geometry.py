"""ml.geometry: fitting to the input square without PyTorch, pixel for pixel as torchvision."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from ml.geometry import eval_geometry, fit_to_square, shift_square


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (360, 363, 192),
        (320, 240, 192),
        (240, 320, 224),
        (192, 192, 192),
        (101, 57, 32),
        (50, 40, 64),
    ],
)
def test_fitting_to_a_square_gives_torchvisions_pixels(width: int, height: int, size: int) -> None:
    rng = np.random.default_rng(width * height + size)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    expected = T.Compose([T.Resize(size), T.CenterCrop(size)])(image)
    fitted = fit_to_square(image, size)
    assert fitted.size == (size, size)
    assert np.array_equal(np.asarray(fitted), np.asarray(expected))


@pytest.mark.parametrize("resize", ["crop", "pad", "stain"])
def test_every_geometry_gives_an_rgb_square_of_the_input_size(resize: str) -> None:
    image = Image.new("L", (90, 60), 128)
    fitted = eval_geometry(48, resize)(image)
    assert (fitted.mode, fitted.size) == ("RGB", (48, 48))


def test_an_unknown_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="resize must be one of"):
        eval_geometry(48, "stretch")


def test_shifting_a_square_moves_its_content_and_mirrors_what_comes_in_at_the_edge() -> None:
    picture = np.arange(36).reshape(6, 6)
    moved = shift_square(picture, 2, -1, reflect=True)
    assert moved.shape == (6, 6)
    # Content: new[y, x] = old[y - 2, x + 1].
    assert moved[2, 0] == picture[0, 1]
    assert moved[5, 4] == picture[3, 5]
    # Mirrored in at the top (row 1 is old row 1's mirror about row 0: old row 1) and right.
    assert moved[1, 0] == picture[1, 1]
    assert moved[2, 5] == picture[0, 4]
    mask = np.zeros((6, 6), bool)
    mask[0, 1] = True
    moved_mask = shift_square(mask, 2, -1, reflect=False)
    assert moved_mask[2, 0]
    assert moved_mask.sum() == 1  # a mask gets nothing mirrored in
