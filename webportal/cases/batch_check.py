"""The batch guard's verdict in words a lab user reads: the batch page, the report (HTML and
PDF), its flags and the API all say it through `describe`, so they never disagree.

The verdict itself is made by the worker (`webportal.pipeline.verdict.check_batch`, with
`ml.ood`) and kept on the batch (`Batch.ood_check` and the `ood_*` figures); this module
only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from webportal.cases.models import Batch

# The report flag of a flagged batch (reports.differential.Flag.code).
FLAG_CODE = "unlike_validation"
HEADLINE = "These images are unlike anything this model was validated on"


@dataclass(frozen=True)
class BatchCheckSummary:
    status: str  # Batch.Check
    status_display: str
    flagged: bool  # nothing auto-accepted: every cell waits for a person
    auto_accepts: bool  # cells at or above the model's threshold count without a review
    score: float | None
    threshold: float | None
    threshold_batch_size: int | None
    cells_checked: int | None
    headline: str  # one line
    explanation: str  # what it means for the lab, in words
    figures: str  # the score against the limit, in one sentence ("" when there are none)


def _figures(batch: Batch) -> str:
    """The verdict's figures in one sentence ("" without a score and a limit)."""
    if batch.ood_score is None or batch.ood_threshold is None:
        return ""
    side = "above" if batch.ood_score > batch.ood_threshold else "not above"
    size = batch.ood_threshold_size
    source = (
        f"batches of {size} of the model's validation cells"
        if size
        else "the model's validation cells"
    )
    cells = batch.ood_cells_checked or 0
    return (
        f"Distance score {batch.ood_score:.2f}, {side} the limit of {batch.ood_threshold:.2f} "
        f"set from {source}; {cells} cell{'s' if cells != 1 else ''} checked."
    )


def describe(batch: Batch) -> BatchCheckSummary | None:
    """The verdict and what it means; None for a batch never checked (not yet claimed by a
    worker, or classified before batches were checked), about which there is nothing to say."""
    check = batch.ood_check
    if check == Batch.Check.NOT_CHECKED:
        return None
    threshold_percent = (
        f"{100 * batch.model_version.threshold:.1f}%"
        if batch.model_version.threshold is not None
        else None
    )
    accepted = (
        f"cells at or above the model's confidence threshold ({threshold_percent}) are "
        "accepted without a review"
        if threshold_percent
        else "the model's classes are accepted without a review"
    )
    if check == Batch.Check.FLAGGED:
        headline = HEADLINE
        explanation = (
            "Something in these images (the microscope, camera, stain or magnification, or "
            "they are not blood cells at all) differs from everything the model was validated "
            "on, so its classes cannot be trusted here. No cell is accepted automatically, "
            "whatever its confidence: a cell counts only once a person has reviewed it."
        )
    elif check == Batch.Check.PASSED:
        headline = "Like the images this model was validated on"
        explanation = f"The batch check found nothing unusual; {accepted}."
    elif check == Batch.Check.PENDING:
        headline = "Batch check waiting for the last cell"
        explanation = (
            "The batch check runs when every cell is classified; until then no cell is "
            "accepted automatically."
        )
    elif check == Batch.Check.TOO_FEW:
        cells = batch.ood_cells_checked or 0
        headline = "Too few cells for the batch check"
        explanation = (
            f"{cells} cell{'s are' if cells != 1 else ' is'} too few for the batch check to "
            f"judge; {accepted}."
        )
    else:  # NO_GUARD
        headline = "No batch check for this model"
        explanation = (
            "This model has no batch check (out-of-distribution guard): nothing tells whether "
            f"these images are like those it was validated on; {accepted}."
        )
    return BatchCheckSummary(
        status=check,
        status_display=batch.get_ood_check_display(),
        flagged=check == Batch.Check.FLAGGED,
        auto_accepts=check not in {Batch.Check.FLAGGED, Batch.Check.PENDING},
        score=batch.ood_score,
        threshold=batch.ood_threshold,
        threshold_batch_size=batch.ood_threshold_size,
        cells_checked=batch.ood_cells_checked,
        headline=headline,
        explanation=explanation,
        figures=_figures(batch),
    )


def flag_message(batch: Batch) -> str | None:
    """The report's flag for a flagged batch (None otherwise): short, with the figures."""
    if not batch.ood_flagged:
        return None
    score = f"{batch.ood_score:.2f}" if batch.ood_score is not None else "?"
    limit = f"{batch.ood_threshold:.2f}" if batch.ood_threshold is not None else "?"
    return (
        f"Images unlike those the model was validated on (batch check score {score}, limit "
        f"{limit}): no cell was accepted automatically."
    )
