from __future__ import annotations

import json

import torch
from torch import nn

from ml import train
from ml.checkpoint import read_metadata
from ml.inference import Classifier


def test_train_writes_a_self_describing_checkpoint_and_reports_then_resumes(tmp_path, image_folder):
    out = tmp_path / "w" / "tiny.pt"
    argv = [
        "--data",
        str(image_folder),
        "--out",
        str(out),
        "--weights",
        "none",
        "--input-size",
        "32",
        "--views",
        "2",
        "--epochs",
        "2",
        "--head-epochs",
        "1",
        "--batch-size",
        "8",
        "--val-fraction",
        "0.34",
        "--workers",
        "0",
    ]
    metrics = train.main(train.get_args_parser().parse_args(argv))

    meta = read_metadata(out)
    assert meta.classes == ["alpha", "beta", "gamma"]
    assert meta.input_size == 32
    assert meta.temperature > 0
    assert meta.recipe["views"] == 2
    assert meta.metrics["n"] == metrics["n_val"] == 6
    saved = json.loads((out.parent / "tiny.metrics.json").read_text())
    assert {"accuracy", "macro_f1", "ece", "threshold", "coverage", "history"} <= set(saved)
    assert len(saved["history"]) == 2
    for name in (
        "tiny.curves.png",
        "tiny.confusion.png",
        "tiny.coverage.png",
        "tiny.report.txt",
        "tiny.last.pt",
    ):
        assert (out.parent / name).exists()
    assert len(Classifier.load(out, device="cpu").classes) == 3

    # Resuming with a larger epoch budget continues after the last finished epoch.
    # argparse keeps the last --epochs given.
    resumed = [*argv, "--epochs", "3", "--resume"]
    metrics = train.main(train.get_args_parser().parse_args(resumed))
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]


def test_train_stores_the_normalisation_of_the_chosen_backbone(tmp_path, image_folder):
    out = tmp_path / "lite.pt"
    argv = ["--data", str(image_folder), "--out", str(out), "--arch", "efficientnet_lite0"]
    argv += ["--weights", "none", "--input-size", "32", "--trunk-blocks", "9", "--views", "1"]
    argv += ["--epochs", "1", "--head-epochs", "1", "--val-fraction", "0.34", "--workers", "0"]

    metrics = train.main(train.get_args_parser().parse_args(argv))

    meta = read_metadata(out)
    assert meta.arch == "efficientnet_lite0"
    assert meta.mean == [127 / 255] * 3
    assert meta.std == [128 / 255] * 3
    # Every PBC-style file is its own group, so the per-cell figure counts every val image.
    assert metrics["cells"]["n"] == metrics["n_val"] == 6
    assert len(Classifier.load(out, device="cpu").predict_logits(torch.zeros(1, 3, 32, 32))) == 1


def test_extra_training_images_join_only_known_classes_on_the_training_side(tmp_path, capsys):
    from PIL import Image

    for name in ("Monocyte", "basophil"):
        (tmp_path / "extra" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "extra" / name / "a.png")
    samples = [(tmp_path / "x.png", 0)]

    added = train.add_extra_training(samples, ["lymphocyte", "monocyte"], [str(tmp_path / "extra")])

    assert added == [1]
    assert samples[1] == (tmp_path / "extra" / "Monocyte" / "a.png", 1)
    assert "ignoring folders ['basophil']" in capsys.readouterr().out


def _folder_loss(model_path, folder, classes):
    from ml.data import list_samples

    clf = Classifier.load(model_path, device="cpu")
    found = list_samples(folder)
    from PIL import Image

    batch = clf.preprocess([Image.open(p) for p, _ in found])
    logits = clf.predict_logits(batch) * clf.temperature  # the raw logits
    target = torch.tensor([clf.classes.index(c) for _, c in found])
    return float(nn.functional.cross_entropy(logits, target))


def test_init_fine_tunes_a_model_on_a_new_folder_and_lowers_its_loss(tmp_path, image_folder):
    from ml.testing import make_tiny_checkpoint

    classes = ["alpha", "beta", "delta", "gamma"]  # delta: a class the new folder lacks
    start = make_tiny_checkpoint(tmp_path / "start.pt", classes, input_size=32, resize="pad")
    out = tmp_path / "adapted.pt"
    before = _folder_loss(start, image_folder, classes)
    options = ["--views", "2", "--epochs", "4", "--head-epochs", "1", "--batch-size", "6"]
    options += ["--val-fraction", "0.34", "--workers", "0", "--lr", "3e-3", "--input-size", "64"]
    epochs: list[dict[str, object]] = []

    # The function the portal's adaptation worker calls: `--init` with a progress callback.
    train.fine_tune(init=start, data=image_folder, out=out, options=options, on_epoch=epochs.append)

    assert [(row["epoch"], row["epochs"]) for row in epochs] == [(e, 4) for e in range(4)]
    meta = read_metadata(out)
    assert meta.classes == classes  # the model's classes, not the folder's
    assert (meta.input_size, meta.resize) == (32, "pad")  # the model's geometry wins
    assert meta.recipe["init"] == str(start)
    assert _folder_loss(out, image_folder, classes) < before


def test_init_refuses_a_folder_with_a_class_the_model_lacks(tmp_path, image_folder):
    import pytest

    from ml.testing import make_tiny_checkpoint

    start = make_tiny_checkpoint(tmp_path / "start.pt", ["alpha", "beta"])
    argv = ["--data", str(image_folder), "--out", str(tmp_path / "x.pt"), "--init", str(start)]

    with pytest.raises(SystemExit, match="no class for folders \\['gamma'\\]"):
        train.main(train.get_args_parser().parse_args(argv))


def test_init_fits_a_new_batch_guard_on_the_folders_own_cells(tmp_path):
    import numpy as np

    from ml.checkpoint import load_ood
    from ml.testing import make_tiny_checkpoint
    from tests.ml.conftest import blob_image

    rng = np.random.default_rng(1)
    folder = tmp_path / "lab"
    for c in ["alpha", "beta", "gamma"]:
        (folder / c).mkdir(parents=True)
        for i in range(14):
            blob_image(rng).save(folder / c / f"{c}{i}.png")
    start = make_tiny_checkpoint(tmp_path / "start.pt", ["alpha", "beta", "gamma"])
    assert load_ood(start) is None
    out = tmp_path / "adapted.pt"
    options = ["--views", "1", "--epochs", "1", "--head-epochs", "0", "--batch-size", "16"]
    options += ["--val-fraction", "0.34", "--workers", "0", "--input-size", "32"]

    train.fine_tune(init=start, data=folder, out=out, options=options)

    guard, meta = load_ood(out), read_metadata(out)
    assert guard is not None
    assert sorted(guard.thresholds) == [1, 5, 20, 100]
    info = meta.metrics["guard"]
    # Fitted on the folder's training side, calibrated on its val side: every image once.
    assert info["fitted_on_cells"] + info["calibrated_on_cells"] == 42
    assert info["calibrated_on_cells"] == meta.metrics["n_val"]
    assert guard.class_means.shape[0] == 3


def test_init_with_too_few_cells_writes_no_guard_and_says_why(tmp_path, image_folder):
    from ml.checkpoint import load_ood
    from ml.testing import make_tiny_checkpoint

    start = make_tiny_checkpoint(tmp_path / "start.pt", ["alpha", "beta", "gamma"])
    out = tmp_path / "adapted.pt"
    options = ["--views", "1", "--epochs", "1", "--head-epochs", "0", "--batch-size", "6"]
    options += ["--val-fraction", "0.34", "--workers", "0", "--input-size", "32"]

    train.fine_tune(init=start, data=image_folder, out=out, options=options)

    assert load_ood(out) is None
    assert "too few cells" in read_metadata(out).metrics["guard"]["none_because"]


def test_shift_moves_the_training_views_off_centre_and_leaves_validation_alone(image_folder):
    from torchvision import transforms as T

    from ml.transforms import RandomShift

    def steps(transform: object) -> list[object]:
        assert isinstance(transform, T.Compose)
        return list(transform.transforms)

    base = ["--data", str(image_folder), "--out", "unused.pt", "--input-size", "32"]
    shifted = train.load_data(train.get_args_parser().parse_args([*base, "--shift", "0.25"]))
    moves = [s for s in steps(shifted.train_set.transform) if isinstance(s, RandomShift)]
    assert [m.fraction for m in moves] == [0.25]
    assert not any(isinstance(s, RandomShift) for s in steps(shifted.val_set.transform))
    plain = train.load_data(train.get_args_parser().parse_args(base))
    assert not any(isinstance(s, RandomShift) for s in steps(plain.train_set.transform))
