from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ml.sources import (
    Cell,
    SourceSpec,
    class_mask,
    masked_cross_entropy,
    stratified_groups_subset,
    voc_cells,
)


def test_masked_loss_never_teaches_a_class_the_source_does_not_label_as_absent():
    logits = torch.tensor([[2.0, 0.5, 3.0, -1.0], [0.1, 0.2, 0.3, 0.4]], requires_grad=True)
    target = torch.tensor([0, 3])
    # Sample 0's source labels classes 0 and 1 only; sample 1's labels every class.
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])

    loss = masked_cross_entropy(logits, target, mask)
    loss.backward()

    assert logits.grad is not None
    assert torch.all(logits.grad[0, 2:] == 0)  # class 2 and 3 logits untouched for sample 0
    assert torch.all(logits.grad[1] != 0)
    expected = (
        torch.nn.functional.cross_entropy(logits[:1, :2], target[:1])
        + torch.nn.functional.cross_entropy(logits[1:], target[1:])
    ) / 2
    assert loss.item() == pytest.approx(expected.item())


def test_masked_label_smoothing_spreads_only_over_the_source_classes():
    logits = torch.tensor([[1.0, 0.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])

    loss = masked_cross_entropy(logits, torch.tensor([0]), mask, label_smoothing=0.2)
    loss.backward()

    expected = torch.nn.functional.cross_entropy(
        logits[:, :2], torch.tensor([0]), label_smoothing=0.2
    )
    assert loss.item() == pytest.approx(expected.item())
    assert logits.grad is not None
    assert logits.grad[0, 2] == 0


def test_class_mask_marks_the_classes_each_source_labels():
    cells = [
        Cell(Path("a"), "lymphocyte", "kaggle", "k1"),
        Cell(Path("b"), "platelet", "pbc", "p1"),
        Cell(Path("c"), "lymphocyte", "pbc", "p2"),
    ]

    masks = class_mask(cells, ["lymphocyte", "platelet"])

    assert masks["kaggle"].tolist() == [True, False]
    assert masks["pbc"].tolist() == [True, True]


def test_a_source_spec_names_lab_kind_path_and_optional_limit():
    spec = SourceSpec.parse("kaggle:bccd:copies:/data/TRAIN:2500")

    assert (spec.name, spec.lab, spec.kind, spec.path, spec.limit) == (
        "kaggle",
        "bccd",
        "copies",
        Path("/data/TRAIN"),
        2500,
    )
    assert SourceSpec.parse("pbc:pbc:folder:/d").limit == 0
    with pytest.raises(ValueError, match="NAME:LAB:KIND:PATH"):
        SourceSpec.parse("pbc:folder:/d")


def _voc(root: Path, stem: str, boxes: list[tuple[int, int, int, int]], names: str) -> None:
    Image.new("RGB", (100, 80), (230, 200, 200)).save(root / "JPEGImages" / f"{stem}.jpg")
    objects = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in [("WBC", b) for b in boxes] + [("RBC", (1, 1, 5, 5))]
    )
    (root / "Annotations" / f"{stem}.xml").write_text(f"<annotation>{objects}</annotation>")
    with open(root / "labels.csv", "a") as f:
        f.write(f'{stem}.jpg,"{names}"\n')


def test_voc_fields_give_one_labelled_crop_per_white_cell_and_skip_ambiguous_fields(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "labels.csv").write_text("image,wbc_category\n")
    _voc(tmp_path, "one", [(40, 30, 60, 50)], "NEUTROPHIL")
    _voc(tmp_path, "two_same", [(0, 0, 20, 20), (70, 50, 90, 70)], "EOSINOPHIL, EOSINOPHIL")
    _voc(tmp_path, "two_mixed", [(0, 0, 20, 20), (70, 50, 90, 70)], "NEUTROPHIL, MONOCYTE")
    _voc(tmp_path, "unlabelled", [(0, 0, 20, 20)], "")

    cells = voc_cells(tmp_path, "bccd")

    assert [(c.path.stem, c.label) for c in cells] == [
        ("one", "neutrophil"),
        ("two_same", "eosinophil"),
        ("two_same", "eosinophil"),
    ]
    assert cells[0].box == (35, 25, 65, 55)  # widened by a quarter of the box on each side
    assert cells[0].open().size == (30, 30)
    assert len({c.group for c in cells}) == 3


def test_a_limited_source_keeps_whole_groups_and_each_class_share():
    cells = [Cell(Path(f"a{i}"), "a", "s", f"a{i // 4}") for i in range(40)]
    cells += [Cell(Path(f"b{i}"), "b", "s", f"b{i // 4}") for i in range(20)]

    subset = stratified_groups_subset(cells, 30, seed=0)

    groups = {c.group for c in subset}
    assert all(sum(c.group == g for c in subset) == 4 for g in groups)
    assert sum(c.label == "a" for c in subset) == 20
    assert sum(c.label == "b" for c in subset) == 12  # whole groups: 10 rounded up to 3 groups
