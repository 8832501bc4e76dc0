from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml import locate_eval
from ml.data import grouped_stratified_split, list_samples, near_duplicate_groups
from ml.locate import (
    CROP_CONTEXT,
    DEFAULT_PARAMS,
    crop_cell,
    image_kind,
    list_images,
    locate,
)
from ml.locate.cli import main as locate_main
from ml.locate_eval import iou, read_voc_boxes
from ml.testing import make_tiny_checkpoint
from ml.transforms import eval_transform

FIELDS = Path(__file__).resolve().parents[2] / "samples" / "fields"
ANNOTATED = sorted(p.stem for p in FIELDS.glob("*.xml"))


def open_field(stem: str) -> Image.Image:
    with Image.open(FIELDS / f"{stem}.jpg") as img:
        return img.convert("RGB")


@pytest.mark.parametrize("stem", ANNOTATED)
def test_every_annotated_white_cell_is_found_once_and_nothing_else(stem):
    truth = read_voc_boxes(FIELDS / f"{stem}.xml")
    cells = locate(open_field(stem))
    assert len(cells) == len(truth)
    for box in truth:
        assert max(iou(cell.box, box) for cell in cells) >= 0.5


def test_two_white_cells_side_by_side_come_out_as_two():
    truth = read_voc_boxes(FIELDS / "BloodImage_00176.xml")
    cells = locate(open_field("BloodImage_00176"))
    best = [max(range(len(truth)), key=[iou(c.box, t) for t in truth].__getitem__) for c in cells]
    assert sorted(best) == list(range(len(truth)))


def test_two_lobes_of_one_neutrophil_come_out_as_one_cell():
    (truth,) = read_voc_boxes(FIELDS / "BloodImage_00005.xml")
    field = open_field("BloodImage_00005")
    # Without the merge the lobes, a few pixels apart, are two nuclei (two boxes).
    assert len(locate(field, replace(DEFAULT_PARAMS, merge_gap=0))) == 2
    (cell,) = locate(field)
    assert iou(cell.box, truth) >= 0.5


def test_nuclei_too_large_together_for_one_cell_stay_two_however_close():
    field = open_field("BloodImage_00176")  # two cells, nuclei a few pixels apart
    assert len(locate(field, replace(DEFAULT_PARAMS, merge_gap=60))) == 2
    # The size prior is what keeps them apart: lift it and they merge.
    assert len(locate(field, replace(DEFAULT_PARAMS, merge_gap=60, merge_max_side=1000))) == 1


def test_the_merge_rule_scales_with_the_magnification():
    scaled = DEFAULT_PARAMS.for_pixel_scale(2)
    assert scaled.merge_gap == 2 * DEFAULT_PARAMS.merge_gap
    assert scaled.merge_max_side == 2 * DEFAULT_PARAMS.merge_max_side


def test_a_field_of_red_cells_and_platelets_has_no_white_cell():
    assert locate(open_field("BloodImage_00020-top")) == []


def test_a_cell_cut_by_the_border_is_reported_and_flagged():
    cells = locate(open_field("BloodImage_00044"))
    cut = [c for c in cells if c.cut_by_border]
    assert len(cut) == 1
    assert cut[0].box[0] == 0  # the left edge
    assert all(not c.cut_by_border for c in cells if c is not cut[0])


def test_a_sliver_of_a_cut_cell_is_not_reported():
    field = open_field("BloodImage_00000")
    cell = locate(field)[0]
    x1, _, x2, _ = cell.nucleus_box
    # The field up to a tenth of the way into the nucleus: the cell cut by the new right edge.
    sliver = field.crop((0, 0, x1 + (x2 - x1) // 10, field.height))
    assert locate(sliver) == []


def test_boxes_are_in_original_pixels_inside_the_image():
    field = open_field("BloodImage_00031")
    for cell in locate(field):
        x1, y1, x2, y2 = cell.box
        assert 0 <= x1 < x2 <= field.width
        assert 0 <= y1 < y2 <= field.height
        assert cell.xywh == (x1, y1, x2 - x1, y2 - y1)


@pytest.mark.parametrize(
    ("gain", "cast"),
    [(0.75, (0, 0, 0)), (1.15, (0, 0, 0)), (1.0, (12, -6, 8))],
    ids=["dimmer", "brighter", "colour-cast"],
)
def test_brightness_and_colour_cast_do_not_move_the_boxes(gain, cast):
    field = open_field("BloodImage_00044")
    pixels = np.asarray(field, dtype=np.float32) * gain + np.array(cast, dtype=np.float32)
    changed = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    before = locate(field)
    after = locate(changed)
    assert len(after) == len(before)
    for a, b in zip(after, before, strict=True):
        assert iou(a.box, b.box) >= 0.8


def test_a_field_twice_as_magnified_is_located_with_scaled_parameters():
    field = open_field("BloodImage_00000")
    big = field.resize((field.width * 2, field.height * 2), Image.Resampling.BILINEAR)
    small_box = locate(field)[0].box
    cells = locate(big, DEFAULT_PARAMS.for_pixel_scale(2))
    assert len(cells) == 1
    assert iou(cells[0].box, [2 * v for v in small_box]) >= 0.8


def test_a_crop_is_a_square_of_context_times_the_longer_side_centred_on_the_box():
    field = open_field("BloodImage_00000")
    cell = locate(field)[0]
    x1, y1, x2, y2 = cell.box
    crop = crop_cell(field, cell.box)
    side = round(max(x2 - x1, y2 - y1) * CROP_CONTEXT)
    assert crop.size == (side, side)
    # The model's own eval transform then makes it its input size.
    tensor = eval_transform(96, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "stain")(crop)
    assert tuple(tensor.shape) == (3, 96, 96)


def test_a_crop_is_at_least_min_side_square():
    field = open_field("BloodImage_00000")
    cell = locate(field)[0]
    x1, y1, x2, y2 = cell.box
    side = round(max(x2 - x1, y2 - y1) * CROP_CONTEXT)
    assert crop_cell(field, cell.box, min_side=side + 100).size == (side + 100, side + 100)
    assert crop_cell(field, cell.box, min_side=10).size == (side, side)


def test_a_crop_past_the_border_is_black_outside_the_field():
    field = open_field("BloodImage_00044")
    cut = next(c for c in locate(field) if c.cut_by_border)
    crop = np.asarray(crop_cell(field, cut.box))
    assert crop.shape[0] == crop.shape[1]
    assert crop[:, 0].max() == 0  # the column left of the field


def test_the_command_line_writes_the_json_contract(tmp_path):
    images = tmp_path / "fields"
    images.mkdir()
    for path in list_images(FIELDS):
        shutil.copy(path, images / path.name)
    (images / "notes.txt").write_text("not an image")
    classes = ["eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    model = make_tiny_checkpoint(tmp_path / "m.pt", classes, resize="stain")
    out = tmp_path / "out.json"

    assert locate_main(["--model", str(model), "--images", str(images), "--json", str(out)]) == 0

    results = json.loads(out.read_text())
    assert [r["image"] for r in results] == [p.name for p in list_images(FIELDS)]
    for result in results:
        assert set(result) == {"image", "cells"}
        with Image.open(images / result["image"]) as img:
            width, height = img.size
        for cell in result["cells"]:
            assert {"box", "label", "confidence"} <= set(cell)
            x1, y1, x2, y2 = cell["box"]
            assert all(isinstance(v, int) for v in cell["box"])
            assert 0 <= x1 < x2 <= width
            assert 0 <= y1 < y2 <= height
            assert cell["label"] in classes
            assert 0.0 <= cell["confidence"] <= 1.0
    by_name = {r["image"]: r for r in results}
    assert by_name["BloodImage_00020-top.jpg"]["cells"] == []
    assert len(by_name["BloodImage_00044.jpg"]["cells"]) == 2


def test_the_command_line_says_so_when_the_folder_has_no_image(tmp_path, capsys):
    model = make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b"])
    empty = tmp_path / "empty"
    empty.mkdir()
    code = locate_main(["--model", str(model), "--images", str(empty), "--json", "-"])
    assert code == 2
    assert "no images" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["--images", "--model"])
def test_the_command_line_names_a_missing_folder_or_checkpoint(tmp_path, capsys, missing):
    model = make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b"])
    args = {"--model": str(model), "--images": str(FIELDS)}
    args[missing] = str(tmp_path / "nowhere")
    code = locate_main([*itertools.chain(*args.items()), "--json", "-"])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def make_bccd_like_folder(root: Path) -> Path:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for stem in ANNOTATED:
        shutil.copy(FIELDS / f"{stem}.jpg", root / "JPEGImages")
        shutil.copy(FIELDS / f"{stem}.xml", root / "Annotations")
    (root / "labels.csv").write_text(
        "image,wbc_category\n"
        + "BloodImage_00000.jpg,NEUTROPHIL\n"
        + 'BloodImage_00031.jpg,"NEUTROPHIL,NEUTROPHIL"\n'
        + 'BloodImage_00044.jpg,"EOSINOPHIL,EOSINOPHIL"\n'
    )
    return root


def test_the_evaluation_scores_detection_and_subtype_on_a_bccd_like_folder(tmp_path):
    data = make_bccd_like_folder(tmp_path / "bccd")
    model = make_tiny_checkpoint(tmp_path / "m.pt", ["eosinophil", "neutrophil"], resize="stain")
    out = tmp_path / "eval.json"

    code = locate_eval.main(["--data", str(data), "--model", str(model), "--json", str(out)])

    assert code == 0
    report = json.loads(out.read_text())
    everything = report["detection"]["all"]
    annotated = sum(len(read_voc_boxes(FIELDS / f"{s}.xml")) for s in ANNOTATED)
    assert everything["annotated"] == annotated
    assert everything["recall"] == 1.0
    assert everything["precision"] == 1.0
    assert everything["false_positives"] == []
    # Only BloodImage_00000 has one annotated white cell and one category.
    assert report["subtype"]["all"]["fields"] == 1
    assert report["subtype"]["all"]["accuracy"] in (0.0, 1.0)


def test_the_sweep_ranks_the_lobe_merge_first_on_a_field_with_a_split_nucleus(tmp_path):
    data = make_bccd_like_folder(tmp_path / "bccd")
    fields = [f for f in locate_eval.load_fields(data) if f.name == "BloodImage_00005"]
    rows = locate_eval.sweep(fields, {"merge_gap": (0, 24)})
    assert [r["merge_gap"] for r in rows] == [24, 0]
    assert (rows[0]["precision"], rows[1]["precision"]) == (1.0, 0.5)


def test_fields_are_tagged_by_the_split_side_of_their_nearest_augmented_copy(tmp_path):
    data = make_bccd_like_folder(tmp_path / "bccd")
    copies = tmp_path / "TRAIN"
    copied = {
        "NEUTROPHIL": ["BloodImage_00000", "BloodImage_00031"],
        "EOSINOPHIL": ["BloodImage_00044"],
    }
    for folder, stems in copied.items():
        (copies / folder).mkdir(parents=True)
        for stem in stems:
            half = open_field(stem).resize((320, 240))
            for k, copy in enumerate([half, half.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]):
                copy.save(copies / folder / f"{stem}_{k}.jpeg", quality=95)
    fields = locate_eval.load_fields(data)

    seen = locate_eval.seen_by_model(fields, copies, val_fraction=0.5, seed=0)

    found = list_samples(copies)
    classes = sorted({c for _, c in found})
    labels = [classes.index(c) for _, c in found]
    groups = near_duplicate_groups([p for p, _ in found], labels)
    _, val = grouped_stratified_split(labels, groups, 0.5, 0)
    side_of = {}
    for i, (path, _) in enumerate(found):
        side_of[path.stem.rsplit("_", 1)[0]] = "validation" if i in val else "training"
    assert {"validation", "training"} == set(side_of.values())
    for folder, stems in copied.items():
        for stem in stems:
            assert seen[stem]["tag"] == side_of[stem]
            assert seen[stem]["copy_class"] == folder.lower()


def test_a_false_positive_and_a_miss_are_counted():
    truth = [(0, 0, 100, 100), (200, 200, 300, 300)]
    cells = locate(open_field("BloodImage_00000"))  # one cell, far from both boxes
    figures = locate_eval.detection_figures(
        [locate_eval.Field("f", FIELDS / "x.jpg", truth, [], "tune")], {"f": cells}
    )
    assert figures["true_positives"] == 0
    assert figures["recall"] == 0.0
    assert figures["precision"] == 0.0
    assert len(figures["missed"]) == 2
    assert len(figures["false_positives"]) == 1


def test_a_camera_field_is_a_field_and_a_single_cell_crop_is_a_cell():
    field = open_field("BloodImage_00000")
    assert image_kind(field) == "field"
    # A PBC-like crop (360x363) is a single cell by its size, whatever is located in it.
    crop = field.crop((200, 100, 560, 463))
    assert image_kind(crop) == "cell"


def test_a_field_sized_image_without_a_white_cell_is_a_field():
    empty = open_field("BloodImage_00020-top")
    assert image_kind(empty) == "field"


def test_a_close_up_of_one_cell_is_a_cell_though_field_sized():
    field = open_field("BloodImage_00000")
    cell = locate(field)[0]
    x1, y1, x2, y2 = cell.box
    close_up = field.crop((x1, y1, x2, y2)).resize((640, 560))
    assert image_kind(close_up) == "cell"


OUT = ("--json", "-")


def test_python_dash_m_runs_the_command_line(tmp_path):
    model = make_tiny_checkpoint(tmp_path / "m.pt", ["a", "b"], resize="stain")
    images = tmp_path / "one"
    images.mkdir()
    shutil.copy(FIELDS / "BloodImage_00000.jpg", images)
    result = subprocess.run(
        [sys.executable, "-m", "ml.locate", "--model", str(model), "--images", str(images), *OUT],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(FIELDS.parents[1])},
    )
    (entry,) = json.loads(result.stdout)
    assert entry["image"] == "BloodImage_00000.jpg"
    assert len(entry["cells"]) == 1
