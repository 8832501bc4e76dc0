"""A checkpoint's test-time views and stain normalisation (`views`, `stain_source` /
`stain_target`, ml/checkpoint.py): stored, read back and applied by `ml.inference.Classifier`
on every path into the network; a checkpoint without them runs exactly as before."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ml.adapt import recalibrate_batchnorm
from ml.checkpoint import load_checkpoint, read_metadata
from ml.engine import available_engines, optimise_for_cpu
from ml.explain import explain_png
from ml.inference import Classifier
from ml.stain import StainStats, reinhard
from ml.testing import make_tiny_checkpoint, synthetic_cells
from ml.transforms import to_input_tensor
from ml.views import VIEWS, view, view_batch

CLASSES = ["a", "b", "c"]
# A lab's stain (pale, bluish) and the training stain (pinker, more contrast), l-alpha-beta.
LAB = StainStats(mean=(-0.15, 0.0, 0.02), std=(0.1, 0.03, 0.004))
TRAINED = StainStats(mean=(-0.22, 0.017, 0.010), std=(0.18, 0.063, 0.0045))


@pytest.fixture
def cells() -> list[Image.Image]:
    """Cells off centre, so a mirror image or a quarter turn is another picture."""
    out = []
    for k, img in enumerate(synthetic_cells(5, seed=3, size=32)):
        pixels = np.asarray(img).copy()
        pixels[: 6 + k, :10] = (30, 30, 200)  # a blue mark in the top-left corner
        out.append(Image.fromarray(pixels))
    return out


@pytest.fixture
def network(tmp_path: Path, cells: list[Image.Image]) -> nn.Module:
    """A random mobilenet_v2 with BatchNorm statistics of the cells: with its initial ones it
    gives nearly the same logits for every picture, and a test of views could not fail."""
    plain = Classifier.load(make_tiny_checkpoint(tmp_path / "random.pt", CLASSES), device="cpu")
    return recalibrate_batchnorm(plain.eager, [plain.preprocess(cells)])


def tiny(
    path: Path,
    network: nn.Module,
    *,
    views: tuple[str, ...] = ("identity",),
    stain: tuple[StainStats, StainStats] | None = None,
    temperature: float = 1.0,
) -> Classifier:
    saved = make_tiny_checkpoint(
        path, CLASSES, model=network, views=views, stain=stain, temperature=temperature
    )
    return Classifier.load(saved, device="cpu")


@pytest.mark.parametrize("name", VIEWS)
def test_a_view_of_the_batch_is_the_batch_of_the_turned_pictures_bit_for_bit(
    tmp_path: Path, cells: list[Image.Image], network: nn.Module, name: str
) -> None:
    clf = tiny(tmp_path / "m.pt", network)
    squares = [clf.fit_to_input(c) for c in cells]

    turned = clf.to_input_batch([view(q, name) for q in squares])

    assert torch.equal(view_batch(clf.to_input_batch(squares), name), turned)


def test_views_and_stain_are_stored_and_read_back(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "m.pt", CLASSES, views=VIEWS, stain=(LAB, TRAINED))

    meta = read_metadata(path)
    clf = Classifier.load(path, device="cpu")

    assert meta.views == VIEWS == clf.views
    assert (meta.stain_source, meta.stain_target) == (LAB, TRAINED) == clf.stain


def test_a_checkpoint_without_them_has_no_such_fields_and_reads_as_the_picture_alone(
    tmp_path: Path,
) -> None:
    path = make_tiny_checkpoint(tmp_path / "m.pt", CLASSES)

    raw = torch.load(path, weights_only=True)
    meta = read_metadata(path)

    assert not {"views", "stain_source", "stain_target"} & set(raw)
    assert (meta.views, meta.stain_source, meta.stain_target) == (("identity",), None, None)


def test_a_checkpoint_without_them_predicts_exactly_what_its_network_gives(
    tmp_path: Path, cells: list[Image.Image], network: nn.Module
) -> None:
    clf = tiny(tmp_path / "m.pt", network, temperature=1.7)
    model, meta = load_checkpoint(tmp_path / "m.pt")
    squares = [clf.fit_to_input(c) for c in cells]
    plain = to_input_tensor(meta.mean, meta.std)

    x = clf.preprocess(cells)

    assert torch.equal(x, torch.stack([plain(q) for q in squares]))
    assert torch.equal(clf.transform(cells[0]), x[0])
    with torch.no_grad():
        assert torch.equal(clf.predict_logits(x), model(x) / 1.7)


def test_the_classifier_averages_the_logits_of_the_checkpoints_views(
    tmp_path: Path, cells: list[Image.Image], network: nn.Module
) -> None:
    one = tiny(tmp_path / "one.pt", network)
    four = tiny(tmp_path / "four.pt", network, views=VIEWS)
    x = one.preprocess(cells)

    averaged = four.predict_logits(x)

    by_hand = torch.stack([one.predict_logits(view_batch(x, v)) for v in VIEWS]).mean(0)
    # One stacked batch against four: the same maths, up to float rounding of the kernels.
    torch.testing.assert_close(averaged, by_hand, atol=1e-4, rtol=1e-4)
    # The turned copies give other logits, so ignoring the views would fail the line above.
    assert (averaged - one.predict_logits(x)).abs().max() > 1e-2
    assert [p.probabilities for p in four.predict(cells)] == [
        p.probabilities for p in four.predictions_from_logits(averaged)
    ]


def test_the_classifier_normalises_the_stain_on_every_path_into_the_network(
    tmp_path: Path, cells: list[Image.Image], network: nn.Module
) -> None:
    plain = tiny(tmp_path / "plain.pt", network)
    stained = tiny(tmp_path / "stained.pt", network, stain=(LAB, TRAINED))
    squares = [plain.fit_to_input(c) for c in cells]
    moved = [reinhard(q, source=LAB, target=TRAINED) for q in squares]

    want = plain.to_input_batch(moved)

    assert torch.equal(stained.preprocess(cells), want)  # the worker's batches
    assert torch.equal(
        stained.preprocess(squares, fitted=[True] * len(cells)), want
    )  # stored copies
    assert torch.equal(torch.stack([stained.transform(c) for c in cells]), want)  # ml.evaluate
    assert torch.equal(stained.to_input(squares[0]), want[0])  # Grad-CAM
    assert not torch.equal(plain.preprocess(cells), want)


def test_the_guard_features_are_of_the_picture_as_given_whatever_the_views(
    tmp_path: Path, cells: list[Image.Image], network: nn.Module
) -> None:
    one = tiny(tmp_path / "one.pt", network)
    four = tiny(tmp_path / "four.pt", network, views=VIEWS)
    x = one.preprocess(cells)

    assert torch.equal(four.embed(x), one.embed(x))


@pytest.mark.parametrize("engine", ["fused-channels-last", "ort-fp32"])
def test_a_faster_engine_swapped_in_runs_the_views_too(
    tmp_path: Path, cells: list[Image.Image], network: nn.Module, engine: str
) -> None:
    if engine not in available_engines():
        pytest.skip(f"{engine} is not installed here")
    clf = tiny(tmp_path / "four.pt", network, views=VIEWS, stain=(LAB, TRAINED))
    x = clf.preprocess(cells)
    eager = clf.predict_logits(x)

    clf.model = optimise_for_cpu(clf.eager, input_size=clf.input_size, engine=engine)

    torch.testing.assert_close(clf.predict_logits(x), eager, atol=1e-4, rtol=1e-4)


def test_grad_cam_explains_a_checkpoint_with_views_and_stain(
    tmp_path: Path, cells: list[Image.Image], network: nn.Module
) -> None:
    clf = tiny(tmp_path / "four.pt", network, views=VIEWS, stain=(LAB, TRAINED))

    png = explain_png(clf, cells[0], "b")

    assert Image.open(io.BytesIO(png)).size == (clf.input_size, clf.input_size)


def test_a_stain_source_without_a_target_is_refused(tmp_path: Path) -> None:
    path = make_tiny_checkpoint(tmp_path / "m.pt", CLASSES, stain=(LAB, TRAINED))
    raw = torch.load(path, weights_only=True)
    del raw["stain_target"]
    torch.save(raw, path)

    with pytest.raises(ValueError, match="stain_source and stain_target"):
        read_metadata(path)
