"""The shipped checkpoints themselves: each loads, is the file its model card names (sha256,
classes) and classifies the committed demo samples of its classes correctly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from ml.checkpoint import load_ood, read_metadata, sha256_of
from ml.inference import Classifier

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "ml" / "weights"
SAMPLES = ROOT / "samples" / "demo"
# Resume state (*.last.pt, git-ignored) is not shipped.
SHIPPED = sorted(p for p in WEIGHTS.glob("*.pt") if not p.name.endswith(".last.pt"))


def model_cards() -> dict[str, str]:
    """Model card sections of ml/weights/README.md by the file they describe."""
    text = (WEIGHTS / "README.md").read_text()
    sections = re.split(r"^# Model card: `([^`]+)`\n", text, flags=re.M)
    return dict(zip(sections[1::2], sections[2::2], strict=True))


def card_row(card: str, field: str) -> str:
    match = re.search(rf"^\| {field} \| (.+?) \|$", card, flags=re.M)
    assert match is not None, f"the model card has no {field!r} row"
    return match.group(1)


def demo_samples() -> list[tuple[Path, str]]:
    """(file, class) of each demo sample: the file name starts with the source's class."""
    return [(p, p.name.split("-", 1)[0]) for p in sorted(SAMPLES.glob("*.jpg"))]


def test_every_shipped_checkpoint_has_a_model_card_and_every_card_a_checkpoint() -> None:
    assert SHIPPED, "no checkpoint under ml/weights"
    assert sorted(model_cards()) == [path.name for path in SHIPPED]


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_a_shipped_checkpoint_is_the_file_its_model_card_describes(path: Path) -> None:
    card = model_cards()[path.name]
    meta = read_metadata(path)

    assert card_row(card, "sha256") == f"`{sha256_of(path)}`"
    assert card_row(card, "classes") == ", ".join(meta.classes)


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_a_shipped_checkpoint_classifies_the_demo_samples_of_its_classes(path: Path) -> None:
    classifier = Classifier.load(path, device="cpu")
    samples = [(file, label) for file, label in demo_samples() if label in classifier.classes]
    # Two samples of every class the model knows: the check cannot pass on a few lucky ones.
    assert sorted({label for _, label in samples}) == sorted(classifier.classes)
    assert len(samples) >= 2 * len(classifier.classes)

    images = []
    for file, _ in samples:
        with Image.open(file) as image:
            images.append(image.convert("RGB"))
    predictions = classifier.predict(images)

    wrong = [
        f"{file.name}: {prediction.label} ({prediction.confidence:.2f})"
        for (file, label), prediction in zip(samples, predictions, strict=True)
        if prediction.label != label
    ]
    assert not wrong, f"{path.name} misclassifies demo samples: {wrong}"


@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_every_shipped_checkpoint_has_a_batch_guard_with_limits_for_20_and_100_cells(
    path: Path,
) -> None:
    guard = load_ood(path)
    assert guard is not None, f"{path.name} has no batch guard (ml.ood): fit one with ml.guard"
    assert {20, 100} <= set(guard.thresholds)
    # Larger batches average more cells: their limit is lower, and every limit is above the
    # typical in-distribution cell (about 1 by construction of the score).
    assert guard.thresholds[100] < guard.thresholds[20]
    assert guard.thresholds[100] > 1.0
    # The card names the guard's limits as stored.
    card = card_row(model_cards()[path.name], "batch guard")
    assert f"{guard.thresholds[20]:.2f} (20)" in card
    assert f"{guard.thresholds[100]:.2f} (100)" in card
