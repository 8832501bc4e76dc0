from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml import crosscheck
from ml.checkpoint import load_ood, read_metadata
from ml.inference import Classifier
from ml.sources import SourceSpec

COLOURS = {"alpha": (200, 60, 60), "beta": (60, 200, 60), "gamma": (60, 60, 200)}


def lab_folder(root: Path, classes: list[str], *, tint: int, n: int = 8) -> Path:
    """root/<class>/*.png: a class is a colour; each lab tints its pictures its own way."""
    rng = np.random.default_rng(tint)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            base = np.array(COLOURS[c]) + tint
            pixels = np.clip(base + rng.normal(0, 20, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


def test_leave_one_lab_out_reports_each_lab_and_writes_a_model_with_its_guard(tmp_path):
    one = lab_folder(tmp_path / "one", ["alpha", "beta", "gamma"], tint=0)
    two = lab_folder(tmp_path / "two", ["alpha", "beta"], tint=40)
    out = tmp_path / "wbc.pt"
    argv = ["--source", f"one:labone:folder:{one}", "--source", f"two:labtwo:folder:{two}"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "r.json")]
    argv += ["--out", str(out), "--weights", "none", "--input-size", "32", "--resize", "crop"]
    argv += ["--epochs", "3", "--head-epochs", "1", "--val-fraction", "0.25", "--chunk", "10"]
    argv += ["--adapt-lab", "labone", "--adapt-n", "0", "2", "--adapt-seeds", "2"]
    argv += ["--batch-size", "8", "--threads", "1", "--guard-batches", "2"]

    report = crosscheck.main(crosscheck.get_args_parser().parse_args(argv))

    assert set(report["folds"]) == {"labone", "labtwo", "all"}
    # Trained on lab two alone, the model never learnt gamma: lab one's gamma cells are
    # counted apart, not as errors of a class it could not know.
    left_one = report["folds"]["labone"]["left_out"]
    assert left_one["untaught"] == {"gamma": 8}
    assert left_one["n"] == 16
    assert report["folds"]["labtwo"]["left_out"]["n"] == 16
    for fold in ("labone", "labtwo"):
        guard = report["folds"][fold]["guard"]
        assert 0.0 <= guard["batch_2"]["auroc"] <= 1.0
        assert 0.0 <= guard["batch_2"]["false_alarm"] <= 1.0
    curve = report["adaptation"]["curve"]
    assert set(curve) == {"0", "2"}
    assert len(curve["2"]["runs"]) == 2
    assert json.loads((tmp_path / "r.json").read_text())["classes"] == ["alpha", "beta", "gamma"]

    meta = read_metadata(out)
    assert meta.classes == ["alpha", "beta", "gamma"]
    assert meta.threshold == crosscheck.shipped_threshold(
        report["cross_threshold"], report["folds"]["all"]["val_threshold"]
    )
    guard = load_ood(out)
    assert guard is not None
    assert guard.thresholds
    clf = Classifier.load(out, device="cpu")
    assert clf.predict_logits(torch.zeros(2, 3, 32, 32)).shape == (2, 3)

    # A second run finds every activation in the cache and computes none again.
    chunks = sorted((tmp_path / "cache").glob("*/chunk-*.pt"))
    stamps = [p.stat().st_mtime_ns for p in chunks]
    val_dir = tmp_path / "val"
    crosscheck.main(
        crosscheck.get_args_parser().parse_args(
            [*argv, "--stage", "cache", "--val-folder", str(val_dir)]
        )
    )
    assert [p.stat().st_mtime_ns for p in chunks] == stamps

    # --val-folder links exactly the val cells, under their source and class, for ml.evaluate.
    linked = sorted(val_dir.glob("*/*/*"))
    assert len(linked) == report["sources"]["one"]["val"] + report["sources"]["two"]["val"]
    assert all(p.is_symlink() and p.resolve().parent.name == p.parent.name for p in linked)
    assert {p.parts[-3] for p in linked} == {"one", "two"}


def test_head_only_trains_the_classifier_alone_on_pooled_features(tmp_path):
    one = lab_folder(tmp_path / "one", ["alpha", "beta"], tint=0)
    two = lab_folder(tmp_path / "two", ["alpha", "beta"], tint=40)
    out = tmp_path / "probe.pt"
    argv = ["--source", f"one:labone:folder:{one}", "--source", f"two:labtwo:folder:{two}"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--weights", "none"]
    argv += ["--input-size", "32", "--resize", "crop", "--head-only", "--head-epochs", "0"]
    argv += ["--epochs", "4", "--val-fraction", "0.25", "--adapt-n", "0", "--batch-size", "8"]
    argv += ["--guard-batches", "2", "--threads", "1"]
    torch.manual_seed(0)
    from ml.model import build_model

    reference = build_model("mobilenet_v2", 2, pretrained=None).state_dict()

    report = crosscheck.main(crosscheck.get_args_parser().parse_args(argv))

    state = torch.load(out, weights_only=True)["state_dict"]
    changed = [k for k in state if not torch.equal(state[k], reference[k])]
    assert changed == ["classifier.1.weight", "classifier.1.bias"]
    assert len(report["folds"]["all"]["history"]) == 4


def test_the_markdown_report_has_a_row_per_left_out_lab_and_source():
    from ml.crosscheck_report import markdown

    scored = {
        "n": 10,
        "untaught": {"platelet": 3},
        "accuracy": 0.5,
        "macro_f1": 0.4,
        "coverage@cross": 0.1,
        "accuracy_above@cross": 1.0,
        "coverage@val": 0.6,
        "accuracy_above@val": 0.7,
    }
    report = {
        "cross_threshold": 0.97,
        "threshold_unattainable_on": ["b"],
        "folds": {
            "a": {
                "trained_on": ["b"],
                "left_out": scored,
                "left_out_by_source": {"s1": scored},
                "guard": {"thresholds": {}, "batch_20": {"auroc": 0.9, "flagged": 0.8}},
            },
            "all": {"trained_on": ["a", "b"], "val": scored, "guard": {"batch_20": {}}},
        },
        "adaptation": {
            "lab": "a",
            "n_test": 5,
            "curve": {"0": {"accuracy_all": 0.2, "accuracy_common": 0.3, "runs": [{}]}},
        },
    }

    text = markdown(report)

    assert (
        "| a | b | 10 | platelet 3 | 0.5000 | 0.4000 | 0.1000 / 1.0000 | 0.6000 / 0.7000 |" in text
    )
    assert "| a (s1) |" in text
    assert "| a | 20 | 0.9000 | 0.8000 | n/a |" in text
    assert "| 0 | 0.2000 | 0.3000 | 1 |" in text
    assert "no threshold reaches the target on: b" in text


def test_folds_runs_only_the_folds_named_and_the_comparison_scores_the_same_val_cells(tmp_path):
    from ml import source_compare

    one = lab_folder(tmp_path / "one", ["alpha", "beta", "gamma"], tint=0)
    two = lab_folder(tmp_path / "two", ["alpha", "beta"], tint=40)
    out = tmp_path / "wbc.pt"
    sources = ["--source", f"one:labone:folder:{one}", "--source", f"two:labtwo:folder:{two}"]
    common = [*sources, "--cache-dir", str(tmp_path / "cache"), "--val-fraction", "0.25"]
    argv = [*common, "--json", str(tmp_path / "r.json"), "--out", str(out), "--weights", "none"]
    argv += ["--input-size", "32", "--resize", "crop", "--epochs", "2", "--head-epochs", "1"]
    argv += ["--chunk", "10", "--adapt-lab", "labone", "--adapt-n", "0", "--batch-size", "8"]
    argv += ["--threads", "1", "--guard-batches", "2", "--folds", "all"]

    report = crosscheck.main(crosscheck.get_args_parser().parse_args(argv))

    # Only the all-labs fold ran; the model and the report were written without the others.
    assert set(report["folds"]) == {"all"}
    assert set(json.loads((tmp_path / "r.json").read_text())["folds"]) == {"all"}
    assert "adaptation" not in report
    assert read_metadata(out).classes == ["alpha", "beta", "gamma"]

    compared = source_compare.compare(
        source_compare.get_args_parser().parse_args(
            [*common, "--model", str(out), "--json", str(tmp_path / "c.json")]
        )
    )
    rows = compared["models"]["wbc.pt"]["sources"]
    # The comparison rebuilds the crosscheck's split: the same number of val cells per source,
    # each scored end to end by the checkpoint as a worker loads it.
    assert {name: row["cells"] for name, row in rows.items()} == {
        name: source["val"] for name, source in report["sources"].items()
    }
    clf = Classifier.load(out, device="cpu")
    args = crosscheck.get_args_parser().parse_args(argv)
    cells = crosscheck.load_cells(args, [SourceSpec.parse(s) for s in args.source])
    is_val = crosscheck.split_cells(cells, ["alpha", "beta", "gamma"], 0.25, 0)
    for name, row in rows.items():
        val = [c for c, v in zip(cells, is_val, strict=True) if v and c.source == name]
        preds = clf.predict([c.open() for c in val])
        right = [p.label == c.label for p, c in zip(preds, val, strict=True)]
        assert row["accuracy"] == sum(right) / len(right)
        assert row["threshold"] == clf.threshold
