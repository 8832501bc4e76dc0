"""The differential's arithmetic: denominators, rounding, absolute counts and flags."""

from __future__ import annotations

from decimal import Decimal

import pytest

from webportal.reports.differential import (
    NOT_CLASSED,
    UNIDENTIFIED,
    build_differential,
    largest_remainder,
)

CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
           "neutrophil", "platelet"]  # fmt: skip


@pytest.mark.parametrize(
    "counts",
    [[1] * 16, [1, 1, 1], [2, 1], [1] * 7, [5, 3, 97, 1, 0, 1], [1, 0, 0], [333, 333, 334]],
)
def test_largest_remainder_percentages_add_up_to_exactly_100_with_one_decimal(counts) -> None:
    percents = largest_remainder(counts)
    assert round(sum(percents), 6) == 100.0
    for percent, count in zip(percents, counts, strict=True):
        assert percent == round(percent, 1)
        assert abs(percent - 100 * count / sum(counts)) < 0.1


def test_sixteen_equal_classes_are_not_all_shown_as_6_2() -> None:
    percents = largest_remainder([1] * 16)
    assert sorted(set(percents)) == [6.2, 6.3]
    assert percents.count(6.3) == 8


def test_leukocyte_percentages_leave_out_erythroblasts_platelets_and_unclassed_cells() -> None:
    counts = {"neutrophil": 60, "lymphocyte": 30, "monocyte": 10, "erythroblast": 5,
              "platelet": 7, UNIDENTIFIED: 3, NOT_CLASSED: 4}  # fmt: skip
    diff = build_differential(classes=CLASSES, counts=counts)
    assert diff.wbc_cells == 100
    rows = {row.label: row for row in diff.rows}
    assert rows["neutrophil"].percent == 60.0
    assert rows["erythroblast"].group == "per_100_wbc"
    assert rows["erythroblast"].percent == 5.0  # per 100 WBC
    assert rows["platelet"].percent is None
    assert rows[UNIDENTIFIED].count == 3
    assert rows[NOT_CLASSED].count == 4
    assert sum(row.percent or 0 for row in diff.rows if row.group == "wbc") == 100.0
    assert diff.total_cells == 60 + 30 + 10 + 5 + 7 + 3


def test_a_wbc_count_gives_absolute_counts_per_class() -> None:
    diff = build_differential(
        classes=CLASSES,
        counts={"neutrophil": 55, "lymphocyte": 45},
        wbc_count=Decimal("7.50"),
    )
    rows = {row.label: row for row in diff.rows}
    assert rows["neutrophil"].absolute == 4.13  # 7.5 * 0.55 = 4.125, rounded half up
    assert rows["lymphocyte"].absolute == 3.38
    assert rows["monocyte"].absolute == 0.0
    assert rows["platelet"].absolute is None


def test_flags_name_out_of_range_classes_immature_cells_unidentified_and_a_low_count() -> None:
    diff = build_differential(
        classes=CLASSES,
        counts={"neutrophil": 45, "lymphocyte": 5, "ig": 2, "erythroblast": 1, UNIDENTIFIED: 2},
    )
    codes = [flag.code for flag in diff.flags]
    assert set(codes) == {"out_of_range", "immature", "unidentified", "low_count"}
    messages = " ".join(flag.message for flag in diff.flags)
    assert "neutrophil 86.5% is above the reference range 40-75%" in messages
    assert "lymphocyte 9.6% is below" in messages
    assert "Immature cells present: erythroblast 1, ig 2." in messages
    assert "Only 52 leukocytes counted" in messages
    rows = {row.label: row for row in diff.rows}
    assert (rows["neutrophil"].flag, rows["lymphocyte"].flag, rows["monocyte"].flag) == (
        "H", "L", "L"
    )  # fmt: skip


def test_a_lab_range_replaces_the_default_for_its_class() -> None:
    counts = {"neutrophil": 80, "lymphocyte": 20}
    default = build_differential(classes=CLASSES, counts=counts)
    wide = build_differential(
        classes=CLASSES, counts=counts, reference_ranges={"neutrophil": (40.0, 85.0)}
    )
    assert {row.label: row.flag for row in default.rows}["neutrophil"] == "H"
    assert {row.label: row.flag for row in wide.rows}["neutrophil"] == ""


def test_a_batch_of_one_cell_warns_that_the_count_is_too_low() -> None:
    diff = build_differential(classes=CLASSES, counts={"basophil": 1})
    assert {row.label: row.percent for row in diff.rows}["basophil"] == 100.0
    assert any(flag.code == "low_count" for flag in diff.flags)


def test_no_cells_gives_zero_percentages_and_no_division_error() -> None:
    diff = build_differential(classes=CLASSES, counts={})
    assert diff.wbc_cells == 0
    assert all(row.percent in (0.0, None) for row in diff.rows)
