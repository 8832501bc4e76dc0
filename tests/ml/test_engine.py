"""ml.engine: every CPU engine is a drop-in for the eager model (shape, dtype, answers).

The ONNX Runtime engines run too: onnxruntime and onnx are pinned in the dev extra, so a missing
one fails here instead of skipping. Inductor is left out (its first call compiles for tens of
seconds) and is exercised by the benchmark.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from ml.checkpoint import load_checkpoint
from ml.engine import (
    ENGINES,
    FP32_ENGINES,
    INT8_ENGINES,
    available_engines,
    best_fp32_engine,
    choose_engine,
    needs_calibration,
    optimise_for_cpu,
)
from ml.inference import Classifier
from ml.testing import make_tiny_checkpoint

SIZE = 32
FAST_ENGINES = [name for name in ENGINES if name != "inductor"]


def engine_param(name: str):
    return pytest.param(name, id=name)


def blobs(count: int, seed: int) -> torch.Tensor:
    """Smooth random colour images, normalised like the model's inputs."""
    generator = torch.Generator().manual_seed(seed)
    small = torch.rand(count, 3, 4, 4, generator=generator)
    return (nn.functional.interpolate(small, size=SIZE, mode="bilinear") - 0.5) / 0.25


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread, as in a worker: on a busy 2-core machine two threads that wait on
    each other made these tests several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("engine") / "m.pt", ["a", "b", "c"])


@pytest.fixture
def mobilenet(checkpoint) -> nn.Module:
    """The tiny MobileNetV2 checkpoint, with BatchNorm statistics measured on blob images.

    Freshly initialised statistics make every input give the same logits, which would let an
    engine that ignores its input pass; measured ones make the logits depend on the image.
    """
    model, _ = load_checkpoint(checkpoint)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        model(blobs(64, seed=100))
    head = model.get_submodule("classifier.1")
    assert isinstance(head, nn.Linear)
    head.weight.data.mul_(30)  # logits far enough apart to compare argmaxes
    return model.eval()


@pytest.fixture(scope="module")
def colour_classifier() -> nn.Module:
    """A small Conv-BN-ReLU network trained to name the dominant colour channel of a blob.

    A trained network has margins that int8 rounding rarely crosses, like the real model;
    a random one is chaotic, and no quantised engine could agree with it.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for step in range(150):
        x = blobs(64, seed=step)
        loss = nn.functional.cross_entropy(model(x), x.mean(dim=(2, 3)).argmax(dim=1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.mark.parametrize("engine", [engine_param(name) for name in FAST_ENGINES])
def test_every_engine_returns_float32_logits_for_any_batch_size(mobilenet, engine):
    fast = optimise_for_cpu(
        mobilenet, input_size=SIZE, engine=engine, calibration=blobs(16, seed=1)
    )

    with torch.inference_mode():
        for count in (5, 1, 32):
            out = fast(blobs(count, seed=2))
            assert out.shape == (count, 3)
            assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "engine", [engine_param(name) for name in FP32_ENGINES if name != "inductor"]
)
def test_fp32_engines_give_eager_logits(mobilenet, engine):
    x = blobs(48, seed=3)
    with torch.inference_mode():
        expected = mobilenet(x)
        assert len(set(expected.argmax(dim=1).tolist())) > 1, "logits must depend on the input"

        got = optimise_for_cpu(mobilenet, input_size=SIZE, engine=engine)(x)

    assert torch.equal(got.argmax(dim=1), expected.argmax(dim=1))
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


@pytest.mark.parametrize("engine", [engine_param(name) for name in INT8_ENGINES])
def test_int8_engines_agree_with_eager_on_most_inputs(colour_classifier, engine):
    model = colour_classifier
    x = blobs(200, seed=1000)
    with torch.inference_mode():
        expected = model(x).argmax(dim=1)
        assert (expected == x.mean(dim=(2, 3)).argmax(dim=1)).float().mean() > 0.9

        fast = optimise_for_cpu(model, input_size=SIZE, engine=engine, calibration=blobs(128, 7))
        got = fast(x).argmax(dim=1)

    assert (got == expected).float().mean() >= 0.95


def test_the_callers_model_is_left_as_it_was(mobilenet):
    before = {name: value.clone() for name, value in mobilenet.state_dict().items()}

    optimise_for_cpu(mobilenet, input_size=SIZE, engine="fused-channels-last")

    after = mobilenet.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert isinstance(mobilenet.features[0][1], nn.BatchNorm2d)  # not folded away


def test_an_optimised_model_drops_into_the_classifier(checkpoint, mobilenet):
    clf = Classifier.load(checkpoint, device="cpu")
    clf.model = mobilenet
    images = [Image.new("RGB", (40, 40), (30 * i, 200 - 20 * i, 90)) for i in range(6)]
    eager = clf.predict(images)

    clf.model = optimise_for_cpu(clf.model, input_size=clf.input_size, engine="fused-channels-last")
    fast = clf.predict(images)

    assert [p.label for p in fast] == [p.label for p in eager]
    for a, b in zip(fast, eager, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=1e-4)


def test_bad_requests_are_refused(mobilenet):
    with pytest.raises(ValueError, match="unknown engine"):
        optimise_for_cpu(mobilenet, input_size=SIZE, engine="tensorrt")
    for engine in INT8_ENGINES:
        assert needs_calibration(engine)
        with pytest.raises(ValueError, match="calibration"):
            optimise_for_cpu(mobilenet, input_size=SIZE, engine=engine)


def test_every_engine_but_inductor_is_available_with_the_dev_install():
    names = available_engines()

    assert {"eager", "channels-last", "fused-channels-last", "fx-int8"} <= set(names)
    assert {"ort-fp32", "ort-int8"} <= set(names)
    assert best_fp32_engine() == "ort-fp32"


def test_without_onnxruntime_the_best_engine_is_pure_pytorch(monkeypatch):
    import ml.engine

    monkeypatch.setattr(ml.engine, "_has_module", lambda name: name not in {"onnxruntime", "onnx"})
    names = ml.engine.available_engines()
    assert not {"ort-fp32", "ort-int8"} & set(names)
    assert ml.engine.best_fp32_engine() == "fused-channels-last"


# --- choosing the worker's engine -----------------------------------------------------------


def test_the_chosen_engine_is_the_fastest_one_that_gives_eagers_answers(mobilenet) -> None:
    check = blobs(8, seed=3)
    choice = choose_engine(mobilenet, input_size=SIZE, check=check)
    assert choice.name == best_fp32_engine()
    assert choice.passed_over == ()
    with torch.inference_mode():
        expected = torch.softmax(mobilenet(check), 1)
        got = torch.softmax(choice.model(check), 1)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert choice.max_probability_change == pytest.approx(
        float((got - expected).abs().max()), abs=1e-6
    )
    assert choice.max_probability_change <= 1e-3


class _Swapped(nn.Module):
    """An "engine" that gets the classes the wrong way round."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flipped: torch.Tensor = self.model(x).flip(1)
        return flipped


def test_an_engine_that_changes_answers_is_passed_over_for_eager_with_the_reason(
    mobilenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.engine

    monkeypatch.setattr(ml.engine, "optimise_for_cpu", lambda model, **_: _Swapped(model))
    choice = choose_engine(
        mobilenet, input_size=SIZE, check=blobs(8, seed=4), wanted="fused-channels-last"
    )
    assert choice.name == "eager"
    assert choice.model is mobilenet
    assert choice.passed_over == ("fused-channels-last: changed a top class on the check images",)


def test_an_engine_that_cannot_be_built_is_passed_over_with_the_reason(
    mobilenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ml.engine

    def broken(model: nn.Module, **_: object) -> nn.Module:
        raise ml.engine.EngineUnavailable("onnxruntime is not installed")

    monkeypatch.setattr(ml.engine, "optimise_for_cpu", broken)
    choice = choose_engine(mobilenet, input_size=SIZE, check=blobs(4, seed=5), wanted="ort-fp32")
    assert choice.name == "eager"
    assert "onnxruntime is not installed" in choice.passed_over[0]


def test_an_int8_engine_is_never_chosen_for_the_worker(mobilenet) -> None:
    with pytest.raises(ValueError, match="auto"):
        choose_engine(mobilenet, input_size=SIZE, check=blobs(2, seed=6), wanted="ort-int8")


# --- the cells an engine is checked on ------------------------------------------------------


def test_with_no_check_images_every_faster_engine_is_refused_with_the_reason(mobilenet) -> None:
    nothing = torch.empty(0, 3, SIZE, SIZE)

    choice = choose_engine(mobilenet, input_size=SIZE, check=nothing)

    assert choice.name == "eager"
    assert choice.model is mobilenet
    assert [reason.split(":")[0] for reason in choice.passed_over] == [
        e for e in ("ort-fp32", "fused-channels-last") if e in available_engines()
    ]
    assert all("nothing to compare" in reason for reason in choice.passed_over)
    named = choose_engine(mobilenet, input_size=SIZE, check=nothing, wanted="fused-channels-last")
    assert (named.name, len(named.passed_over)) == ("eager", 1)


def test_the_package_ships_two_real_cells_of_each_class_to_check_an_engine_on() -> None:
    import tomllib
    from pathlib import Path

    from ml.engine import CHECK_CELLS_DIR, check_cells

    names = sorted(p.name for p in CHECK_CELLS_DIR.glob("*.jpg"))
    classes = [name.split("-")[0] for name in names]
    assert sorted(set(classes)) == [
        "basophil",
        "eosinophil",
        "erythroblast",
        "ig",
        "lymphocyte",
        "monocyte",
        "neutrophil",
        "platelet",
    ]
    assert all(classes.count(c) == 2 for c in classes)
    cells = check_cells()
    assert len(cells) == len(names) == 16
    assert all(cell.mode == "RGB" and min(cell.size) >= 300 for cell in cells)  # PBC's ~360 px
    assert len(check_cells(limit=3)) == 3
    # Package data: an installed worker has them too.
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["ml"]
    assert "check_cells/*.jpg" in shipped


def test_the_shipped_cells_let_an_engine_be_checked_and_chosen(checkpoint, mobilenet) -> None:
    from ml.engine import check_cells

    check = Classifier.load(checkpoint, device="cpu").preprocess(check_cells())

    choice = choose_engine(mobilenet, input_size=SIZE, check=check)

    assert check.shape == (16, 3, SIZE, SIZE)
    assert choice.name == best_fp32_engine()
    assert choice.passed_over == ()
    assert choice.max_probability_change <= 1e-3
