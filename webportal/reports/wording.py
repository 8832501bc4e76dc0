"""The sentences a report carries, one place for the page, the PDF and the API: who verified
the cells, the decision-support statement, the rounding and interval notes, the critical
banner. Pure: they read a Report, never the database."""

from __future__ import annotations

from webportal.reports.content import NOT_VERIFIED_SUPPORT
from webportal.reports.models import Report

ROUNDING_NOTE = (
    "Each percentage is rounded on its own to one decimal, so the leukocyte column may add up "
    "to 99.9 or 100.1; flags are decided on the unrounded values."
)
INTERVAL_NOTE = (
    "95% CI: the exact binomial (Clopper-Pearson) interval of each percentage, the interval "
    "of Rümke's table (CLSI H20-A2): the fewer cells counted, the wider it is."
)


def threshold_text(threshold: float | None) -> str:
    """A calibrated-confidence threshold as printed: three decimals (0.99387 -> 0.994); one
    above every confidence (ModelVersion.auto_accepts_nothing) in words."""
    if threshold is None:
        return "none"
    if threshold > 1.0:
        return "none reached: nothing auto-accepted"
    return f"{threshold:.3f}"


def threshold_percent(threshold: float | None) -> str:
    """The threshold in percent for a page's heading; "" for none and for one above every
    confidence (the page says "nothing auto-accepted" instead)."""
    return "" if threshold is None or threshold > 1.0 else f"{100 * threshold:.1f}"


def verification_line(report: Report) -> str:
    """How many cells a person verified and how many the model accepted, naming the model."""
    model = report.model_version
    labelled = report.labelled_cells
    person, accepted = report.person_verified_cells, report.model_accepted_cells
    if person is None or accepted is None:
        return (
            "Not recorded: this version was written before the report counted who verified "
            f"its cells. Model: {model.name} (threshold {threshold_text(model.threshold)})."
        )
    others = labelled - person - accepted
    line = (
        f"{person} of {labelled} cells verified by a person; "
        f"{accepted} accepted by the model without review (confidence at "
        f"or above its threshold {threshold_text(model.threshold)}). Model: {model.name}."
    )
    if others > 0:
        line += f" {others} labelled by a machine account, not verified by a person."
    return line


def decision_support(report: Report) -> str:
    """The decision-support statement: "verified by a qualified person" only when every
    labelled cell's label is a person's and a pathologist signed."""
    if not report.is_signed:
        return NOT_VERIFIED_SUPPORT
    if report.fully_verified:
        return (
            "Decision support: the cell classes were proposed by an automated classifier and "
            "every cell was verified by a qualified person before this report was signed. It "
            "is not an unattended diagnosis."
        )
    if report.person_verified_cells is None:
        return (
            "Decision support: the cell classes were proposed by an automated classifier; how "
            "many a person verified was not recorded for this version. A pathologist signed "
            "the report. It is not an unattended diagnosis."
        )
    return (
        "Decision support: the cell classes were proposed by an automated classifier; "
        f"{report.person_verified_cells} of {report.labelled_cells} cells were verified by a "
        f"person and {report.model_accepted_cells} were accepted by the classifier without "
        "review. A pathologist signed the report. It is not an unattended diagnosis."
    )


def critical_messages(report: Report) -> list[str]:
    return [flag["message"] for flag in report.flags if flag["code"] == "critical"]


def below_minimum_line(report: Report) -> str:
    """Printed when the report was signed under the lab's minimum of leukocytes."""
    if not report.below_minimum_reason:
        return ""
    return (
        f"Signed with {report.wbc_cells} leukocytes counted, under the lab's minimum. Reason: "
        f"{report.below_minimum_reason}"
    )


def differential_context(report: Report | None) -> dict[str, object]:
    """What reports/_differential.html needs (the report page and the review gallery)."""
    return {
        "report": report,
        "rows": report.differential if report else [],
        "flags": report.flags if report else [],
        "wbc_cells": report.wbc_cells if report else 0,
        "percent_total": report.percent_total if report else 0.0,
        "show_absolute": bool(report and report.wbc_count is not None),
        "rounding_note": ROUNDING_NOTE,
        "interval_note": INTERVAL_NOTE,
    }
