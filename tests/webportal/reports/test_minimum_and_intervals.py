"""Issue 19: the lab's vocabulary in the differential, each value rounded on its own with its
95 % interval, flags on the unrounded value, and the minimum count to sign."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied

from tests.factories import classified_batch
from webportal.accounts.models import Role
from webportal.audit.models import AuditEvent
from webportal.cases.models import Cell
from webportal.cases.services import ServiceError
from webportal.reports import services
from webportal.reports.differential import (
    NOT_CLASSED,
    build_differential,
    clopper_pearson,
    shown,
)
from webportal.reports.models import Report
from webportal.reports.reviews import review_cells
from webportal.reports.vocabulary import build_vocabulary

CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
           "neutrophil", "platelet"]  # fmt: skip


def _rows(diff):
    return {row.label: row for row in diff.rows}


@pytest.mark.parametrize(
    ("count", "total", "low", "high"),
    # 3 of 27 is the example (2.4-29.2 %); 0 of 100 and 100 of 100 are one-sided;
    # 50 of 100 is Rümke's table's 40-60 % (39.8-60.2 exact).
    [(3, 27, 2.4, 29.2), (0, 100, 0.0, 3.6), (100, 100, 96.4, 100.0), (50, 100, 39.8, 60.2)],
)
def test_the_interval_is_the_exact_binomial_one(count, total, low, high) -> None:
    p_low, p_high = clopper_pearson(count, total)
    assert (shown(100 * p_low), shown(100 * p_high)) == (low, high)


def test_each_value_is_rounded_on_its_own_and_the_total_may_read_100_1() -> None:
    # 11 of 27 is 40.74 %: 40.7 (largest remainder made it 40.8).
    diff = build_differential(
        classes=CLASSES, counts={"neutrophil": 11, "lymphocyte": 13, "monocyte": 3}
    )
    rows = _rows(diff)
    assert (rows["neutrophil"].percent, rows["lymphocyte"].percent) == (40.7, 48.1)
    assert rows["monocyte"].percent == 11.1
    assert (rows["monocyte"].ci_low, rows["monocyte"].ci_high) == (2.4, 29.2)
    # Three equal classes: 33.3 each, 99.9 in all (said once on every output).
    thirds = build_differential(
        classes=CLASSES, counts={"neutrophil": 1, "lymphocyte": 1, "monocyte": 1}
    )
    assert [r.percent for r in thirds.rows if r.percent and r.group == "wbc"] == [33.3] * 3


def test_flags_are_decided_on_the_unrounded_value() -> None:
    # 3 basophils of 146 = 2.05 %: above 0-2 % (forced to 100.0 it was shown 2.0, no flag).
    diff = build_differential(
        classes=CLASSES, counts={"basophil": 3, "neutrophil": 90, "lymphocyte": 53}
    )
    basophil = _rows(diff)["basophil"]
    assert (basophil.percent, basophil.flag) == (2.1, "H")
    # 201 of 10,000 is 2.01 %: shown 2.0 and still flagged H, on the exact value.
    close = build_differential(
        classes=CLASSES, counts={"basophil": 201, "neutrophil": 6000, "lymphocyte": 3799}
    )
    assert (_rows(close)["basophil"].percent, _rows(close)["basophil"].flag) == (2.0, "H")


def test_blasts_count_in_the_denominator_smudge_cells_apart_and_artefacts_nowhere() -> None:
    vocabulary = build_vocabulary(classes=CLASSES)
    diff = build_differential(
        categories=vocabulary,
        counts={"neutrophil": 40, "lymphocyte": 30, "blast": 30, "smudge cell": 7,
                "artefact": 5, NOT_CLASSED: 2},
    )  # fmt: skip
    rows = _rows(diff)
    assert diff.wbc_cells == 100
    assert (rows["blast"].percent, rows["blast"].loinc, rows["blast"].critical) == (
        30.0,
        "26446-5",
        True,
    )
    assert (rows["smudge cell"].group, rows["smudge cell"].percent) == ("per_100_wbc", 7.0)
    assert rows["artefact"].group == "not_classed"
    assert diff.total_cells == 100 + 7  # artefacts and not-classed cells are not counted
    assert diff.critical
    assert diff.flags[0].code == "critical"
    assert "blast 30 (30.0% of leukocytes)" in diff.flags[0].message
    # Categories nobody used are not listed; the model's classes always are.
    assert "myelocyte" not in rows
    assert "basophil" in rows


def test_a_lab_category_joins_and_a_lab_marks_a_model_class_critical() -> None:
    from webportal.reports.differential import Category

    vocabulary = build_vocabulary(
        classes=CLASSES,
        lab_categories=[Category("hairy cell", "wbc", critical=True),
                        Category("eosinophil", "wbc", critical=True)],
    )  # fmt: skip
    labels = [c.label for c in vocabulary]
    assert labels[: len(CLASSES)] == CLASSES
    assert {"blast", "band neutrophil", "plasma cell", "artefact", "hairy cell"} <= set(labels)
    critical = {c.label for c in vocabulary if c.critical}
    assert critical == {"blast", "hairy cell", "eosinophil"}
    assert not next(c for c in vocabulary if c.label == "hairy cell").in_model


@pytest.fixture
def small_batch(lab_case, model_version):
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.9)] * 20 + [("lymphocyte", 0.9)] * 7,
    )


def test_below_the_minimum_signing_needs_a_reason_which_the_report_keeps(
    small_batch, people
) -> None:
    pathologist = people[Role.PATHOLOGIST]
    report = small_batch.reports.get()
    with pytest.raises(ServiceError, match="27 leukocytes counted, under the lab's minimum of 100"):
        services.sign_report(actor=pathologist, report=report)
    assert not AuditEvent.objects.filter(action="report.signed").exists()
    signed = services.sign_report(
        actor=pathologist, report=report, below_minimum_reason="Severe leukopenia."
    )
    assert (signed.status, signed.below_minimum_reason) == (
        Report.Status.FINAL,
        "Severe leukopenia.",
    )
    event = AuditEvent.objects.get(action="report.signed")
    assert event.after is not None
    assert event.after["below_minimum_reason"] == "Severe leukopenia."


def test_the_lab_sets_its_own_minimum(small_batch, people) -> None:
    services.set_policy(
        actor=people[Role.ADMIN], lab=small_batch.case.lab, min_leukocytes=20,
        every_cell_verified=False,
    )  # fmt: skip
    signed = services.sign_report(actor=people[Role.PATHOLOGIST], report=small_batch.reports.get())
    assert signed.below_minimum_reason == ""
    assert AuditEvent.objects.filter(action=services.POLICY_CHANGED).count() == 1
    with pytest.raises(PermissionDenied):
        services.set_policy(actor=people[Role.PATHOLOGIST], lab=small_batch.case.lab,
                            min_leukocytes=1, every_cell_verified=False)  # fmt: skip


def test_a_report_with_no_leukocyte_can_never_be_signed(small_batch, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    review_cells(
        actor=pathologist, cells=Cell.objects.filter(image__batch=small_batch), label=NOT_CLASSED
    )
    report = small_batch.reports.get()
    assert report.wbc_cells == 0
    assert "no_leukocytes" in [flag["code"] for flag in report.flags]
    with pytest.raises(ServiceError, match="no leukocyte is counted"):
        services.sign_report(actor=pathologist, report=report, below_minimum_reason="Anyway.")
    report.refresh_from_db()
    assert report.status == Report.Status.PRELIMINARY
