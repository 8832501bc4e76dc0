from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ml.checkpoint import load_checkpoint, save_checkpoint
from ml.inference import Classifier
from ml.model import build_model
from ml.testing import make_tiny_checkpoint
from ml.transforms import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture
def images():
    rng = np.random.default_rng(1)
    rgb = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(40, 40), (30, 50), (64, 33)]
    ]
    # Greyscale and RGBA uploads must work too.
    return [*rgb, rgb[0].convert("L"), rgb[1].convert("RGBA")]


def test_classifier_predicts_every_image_with_probabilities_summing_to_one(tmp_path, images):
    clf = Classifier.load(make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b", "c"]), device="cpu")

    preds = clf.predict(images, batch_size=2)

    assert len(preds) == len(images)
    for p in preds:
        assert set(p.probabilities) == {"a", "b", "c"}
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.label == max(p.probabilities, key=p.probabilities.__getitem__)
        assert p.confidence == pytest.approx(p.probabilities[p.label])


def test_a_saved_and_loaded_classifier_is_the_model_that_was_saved(tmp_path, images):
    torch.manual_seed(3)
    model = build_model("mobilenet_v2", 2, pretrained=None).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(
        path,
        model,
        arch="mobilenet_v2",
        classes=["a", "b"],
        input_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        recipe={},
        metrics={},
    )

    clf = Classifier.load(path, device="cpu")
    got = clf.predict(images[:3], batch_size=2)

    saved, loaded = model.state_dict(), clf.eager.state_dict()
    assert set(loaded) == set(saved)
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)
    x = torch.stack([clf.transform(image) for image in images[:3]])
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1).tolist()
    for prediction, row in zip(got, expected, strict=True):
        assert [prediction.probabilities[c] for c in ("a", "b")] == pytest.approx(row, abs=1e-5)


def test_temperature_divides_the_logits_before_softmax(tmp_path, images):
    path = make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b", "c"])
    model, meta = load_checkpoint(path)
    clf = Classifier(
        model,
        classes=meta.classes,
        arch=meta.arch,
        input_size=meta.input_size,
        mean=meta.mean,
        std=meta.std,
        temperature=2.0,
    )
    x = torch.stack([clf.transform(images[0].convert("RGB"))])
    with torch.no_grad():
        expected = torch.softmax(model(x) / 2.0, dim=1)[0]
    got = clf.predict(images[:1])[0]
    assert [got.probabilities[c] for c in meta.classes] == pytest.approx(
        expected.tolist(), abs=1e-6
    )


def test_classifier_returns_nothing_for_no_images(tmp_path):
    clf = Classifier.load(make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b"]), device="cpu")
    assert clf.predict([]) == []


def test_pad_transform_keeps_the_whole_4_3_frame_and_crop_keeps_the_centre():
    from ml.transforms import eval_transform, pad_to_square

    img = Image.new("RGB", (40, 30), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 4, 30))  # a red band at the left edge

    padded = pad_to_square(img)
    assert padded.size == (40, 40)
    assert padded.getpixel((0, 0)) == (0, 0, 0)  # black bands above and below
    assert padded.getpixel((1, 20)) == (255, 0, 0)  # the edge band survives
    ident = ([0.0] * 3, [1.0] * 3)
    pad = eval_transform(40, *ident, "pad")(img)
    crop = eval_transform(30, *ident, "crop")(img)
    assert pad.shape == (3, 40, 40)
    assert crop.shape == (3, 30, 30)
    assert pad[0, 20, 1] == 1.0
    assert pad[1, 20, 1] == 0.0
    assert crop[1, 15, 0] == 1.0  # cropped away by crop: white at the new left edge
    with pytest.raises(ValueError, match="resize"):
        eval_transform(32, *ident, "stretch")


def test_checkpoint_resize_mode_reaches_the_classifier_and_old_files_default_to_crop(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b"])
    assert Classifier.load(path, device="cpu").resize == "crop"

    ckpt = torch.load(path, weights_only=True)
    ckpt["resize"] = "pad"
    torch.save(ckpt, path)
    clf = Classifier.load(path, device="cpu")
    assert clf.resize == "pad"
    assert clf.preprocess([Image.new("RGB", (50, 30))]).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_an_image_fitted_and_stored_as_png_gives_the_same_tensor_as_the_original(resize):
    from ml.transforms import eval_geometry, eval_transform, to_input_tensor

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (53, 71, 3), dtype=torch.uint8, generator=generator)
    original = Image.fromarray(pixels.numpy())
    stored = io.BytesIO()
    eval_geometry(24, resize)(original).save(stored, format="PNG", compress_level=1)
    fitted = Image.open(io.BytesIO(stored.getvalue()))

    assert fitted.size == (24, 24)
    transform = eval_transform(24, [0.5] * 3, [0.25] * 3, resize)
    assert torch.equal(to_input_tensor([0.5] * 3, [0.25] * 3)(fitted), transform(original))


def test_preprocess_only_converts_images_marked_as_fitted(tmp_path):
    clf = Classifier.load(make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b"]), device="cpu")
    original = Image.new("RGB", (50, 40), (10, 200, 30))
    fitted = clf.fit_to_input(original)

    batch = clf.preprocess([original, fitted], fitted=[False, True])

    assert torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="zip"):
        clf.preprocess([original], fitted=[True, False])


@pytest.mark.parametrize("resize", ["crop", "pad", "stain", "cell"])
def test_preprocess_gives_torchvisions_tensors_bit_for_bit(tmp_path, resize):
    """The batched conversion equals eval_transform (ToTensor then Normalize) image by image."""
    clf = Classifier.load(
        make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b"], resize=resize), device="cpu"
    )
    generator = torch.Generator().manual_seed(1)
    images = [
        Image.fromarray(
            torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator).numpy()
        )
        for h, w in [(53, 71), (40, 40), (90, 33)]
    ]
    images.append(images[0].convert("L"))  # not RGB: converted as before
    expected = torch.stack([clf.transform(img.convert("RGB")) for img in images])

    batch = clf.preprocess(images)

    assert batch.dtype == torch.float32
    assert batch.is_contiguous()
    assert torch.equal(batch, expected)
    fitted = [clf.fit_to_input(img.convert("RGB")) for img in images]
    assert torch.equal(clf.preprocess(fitted, fitted=[True] * len(fitted)), expected)
    with pytest.raises(ValueError, match="not fitted"):
        clf.preprocess(images[:1], fitted=[True])


def test_stain_crop_centres_the_violet_cell_and_ignores_a_distant_speck():
    from PIL import ImageDraw

    from ml.transforms import crop_to_stain, eval_transform

    pink, violet = (230, 170, 180), (120, 60, 170)
    img = Image.new("RGB", (200, 150), pink)
    draw = ImageDraw.Draw(img)
    draw.ellipse((125, 15, 175, 65), fill=violet)  # the cell: centre (150, 40), 50 px across
    draw.ellipse((10, 130, 14, 134), fill=violet)  # a platelet far away

    crop = crop_to_stain(img)

    side = crop.width
    assert crop.height == side
    assert 65 <= side <= 80  # the cell's ~50 px extent (2nd-98th percentile) times the margin
    assert crop.getpixel((side // 2, side // 2)) == violet
    # The cell sits in the middle: pink (or black beyond the frame) at the corners.
    assert crop.getpixel((1, side - 2)) in (pink, (0, 0, 0))
    assert eval_transform(32, [0.0] * 3, [1.0] * 3, "stain")(img).shape == (3, 32, 32)


def test_stain_crop_keeps_the_whole_frame_when_nothing_is_stained():
    from ml.transforms import crop_to_stain

    crop = crop_to_stain(Image.new("RGB", (60, 40), (230, 170, 180)))
    assert crop.size == (60, 60)
    assert crop.getpixel((30, 2)) == (0, 0, 0)
    assert crop.getpixel((30, 30)) == (230, 170, 180)


def test_read_ahead_yields_everything_in_order_while_the_next_item_is_made():
    import threading

    from ml.inference import read_ahead

    made_by: list[str] = []

    def items():
        for i in range(5):
            made_by.append(threading.current_thread().name)
            yield (i, i * i)

    assert list(read_ahead(items())) == [(i, i * i) for i in range(5)]
    assert all(name.startswith("decode") for name in made_by)
    assert list(read_ahead([])) == []
