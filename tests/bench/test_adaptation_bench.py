"""bench.adaptation: another lab's cells laid out as the portal's export, no source cell on both
sides, and the worker's fine-tune and evaluation run on them."""

from __future__ import annotations

import json
from pathlib import Path

from bench import adaptation
from ml.testing import make_tiny_checkpoint
from tests.factories import cell_png

CLASSES = ["lymphocyte", "monocyte", "neutrophil"]


def _copies_folder(root: Path) -> Path:
    """Per class, 8 source cells with 3 copies each (files named as the Kaggle set's)."""
    source = root / "source"
    for index, label in enumerate(CLASSES):
        folder = source / label.upper()
        folder.mkdir(parents=True)
        for cell in range(8):
            for copy in range(3):
                png = cell_png(index, seed=1000 * index + 10 * cell + copy)
                (folder / f"_{copy}_{100 * index + cell}.png").write_bytes(png)
    return source


def test_the_bench_keeps_each_source_cell_on_one_side_and_measures_both_models(
    tmp_path: Path,
) -> None:
    source = _copies_folder(tmp_path)
    groups = [
        {"path": str(path), "label": path.parent.name.lower(), "group": path.stem.split("_")[2]}
        for path in source.rglob("*.png")
    ]
    (tmp_path / "groups.json").write_text(json.dumps(groups))
    model = make_tiny_checkpoint(tmp_path / "tiny.pt", CLASSES)

    counts = adaptation.lab_folders(
        source,
        tmp_path / "lab",
        classes=CLASSES,
        train_per_class=5,
        heldout_per_class=3,
        groups=adaptation._groups(tmp_path / "groups.json"),
        seed=0,
    )
    report = adaptation.main(
        ["--model", str(model), "--source", str(source), "--groups", str(tmp_path / "groups.json"),
         "--train-per-class", "5", "--heldout-per-class", "3",
         "--options", "--epochs 1 --views 1 --head-epochs 0 --batch-size 8"]
    )  # fmt: skip

    assert counts == {"train": dict.fromkeys(CLASSES, 5), "heldout": dict.fromkeys(CLASSES, 3)}
    sides = {side: {p.stem for p in (tmp_path / "lab" / side).rglob("*.png")} for side in counts}
    assert len(sides["train"]) == 15
    assert len(sides["heldout"]) == 9
    assert sides["train"].isdisjoint(sides["heldout"])
    assert report["base"]["n"] == report["adapted"]["n"] == 9
    assert report["fine_tune_seconds"] > 0
    assert report["options"][-4:] == ["--workers", "0", "--threads", report["options"][-1]]
