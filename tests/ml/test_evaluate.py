from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from PIL import Image

from ml import evaluate
from ml.inference import Classifier
from ml.testing import make_tiny_checkpoint

CONTRACT_KEYS = {
    "n",
    "accuracy",
    "macro_f1",
    "per_class",
    "confusion",
    "ece",
    "threshold",
    "coverage",
    "accuracy_above_threshold",
    "images_per_second",
}


def test_evaluate_json_has_contract_keys_and_correct_numbers_on_a_hand_made_case(
    tmp_path, image_folder, monkeypatch
):
    # The clock around the timed loop reads 10 s, then 16 s: 24 images in 6 s.
    monkeypatch.setattr(evaluate, "time", SimpleNamespace(perf_counter=iter([10.0, 16.0]).__next__))
    # A folder whose name matches no class of the model: its images must count as wrong.
    shutil.copytree(image_folder / "Gamma", image_folder / "Delta")
    model = make_tiny_checkpoint(tmp_path / "m.pt", ["alpha", "beta", "gamma"])
    out = tmp_path / "report.json"
    args = evaluate.get_args_parser().parse_args(
        [
            "--model",
            str(model),
            "--data",
            str(image_folder),
            "--json",
            str(out),
            "--batch-size",
            "5",
            "--workers",
            "0",
            "--coverage-png",
            str(tmp_path / "coverage.png"),
        ]
    )

    evaluate.main(args)
    report = json.loads(out.read_text())

    assert set(report) >= CONTRACT_KEYS
    assert report["n"] == 24
    assert report["unmatched_folders"] == ["delta"]
    assert report["confusion"]["labels"] == ["alpha", "beta", "gamma", "delta"]
    # The numbers must agree with what the Classifier predicts image by image.
    clf = Classifier.load(model, device="cpu")
    truth, images = [], []
    for folder in sorted(image_folder.iterdir()):
        for f in sorted(folder.iterdir()):
            truth.append(folder.name.lower())
            images.append(Image.open(f))
    preds = clf.predict(images)
    correct = [p.label == t for p, t in zip(preds, truth, strict=True)]
    assert report["accuracy"] == pytest.approx(sum(correct) / 24)
    matrix = report["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == 24
    assert sum(matrix[3]) == 6
    assert matrix[3][3] == 0
    assert report["per_class"]["delta"]["recall"] == 0.0
    assert report["threshold"] is None
    assert report["coverage"] == 1.0
    assert report["images_per_second"] == pytest.approx(24 / 6)
    # Full coverage first, at the overall accuracy; the plot is written.
    assert report["coverage_curve"][0]["coverage"] == 1.0
    assert report["coverage_curve"][0]["accuracy"] == pytest.approx(report["accuracy"])
    assert (tmp_path / "coverage.png").stat().st_size > 0
