"""Reviews: a person's word on cells, and the current label of every cell of a batch.

The current label of a cell is its latest review, else its prediction from the batch's model,
or "unidentified" when that prediction's calibrated confidence is under the model's threshold.
Reviews are appended, never edited; predictions are never touched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery

from webportal.accounts.models import Role
from webportal.accounts.services import REVIEWERS, require_role
from webportal.audit.models import Action
from webportal.audit.services import record_events
from webportal.cases.models import Batch, Cell, ModelVersion, Prediction, Review
from webportal.cases.services import ServiceError
from webportal.reports.differential import NOT_CLASSED, UNIDENTIFIED

# A cell of a batch still being classified: no prediction yet, counted nowhere.
PENDING = "pending"


def reviewer_roles(*, via_api: bool) -> frozenset[str]:
    """Staff (first review) and pathologists; integrators too, through the API only."""
    return REVIEWERS | {Role.INTEGRATOR} if via_api else REVIEWERS


@dataclass(frozen=True)
class CellState:
    cell_id: int
    image_id: int
    original_name: str
    box: Any
    predicted: str | None  # the model's top class
    confidence: float | None  # its calibrated probability
    reviewed: str | None  # the latest review's label
    reviewer_role: str | None
    current: str

    @property
    def confidence_percent(self) -> str:
        return "" if self.confidence is None else f"{100 * self.confidence:.1f}"


def current_label(
    *,
    predicted: str | None,
    confidence: float | None,
    reviewed: str | None,
    threshold: float | None,
) -> str:
    if reviewed:
        return reviewed
    if predicted is None or confidence is None:
        return PENDING
    if threshold is not None and confidence < threshold:
        return UNIDENTIFIED
    return predicted


def batch_cells(*, batch: Batch, cell_ids: Collection[int] | None = None) -> list[CellState]:
    """Every cell of the batch (or those of `cell_ids`) with its labels, in one query."""
    model_version: ModelVersion = batch.model_version
    prediction = Prediction.objects.filter(cell=OuterRef("pk"), model_version=model_version)
    latest_review = Review.objects.filter(cell=OuterRef("pk")).order_by("-id")
    cells: QuerySet[Cell] = Cell.objects.filter(image__batch=batch)
    if cell_ids is not None:
        cells = cells.filter(pk__in=list(cell_ids))
    rows = (
        cells.annotate(
            predicted=Subquery(prediction.values("label")[:1]),
            confidence=Subquery(prediction.values("confidence")[:1]),
            reviewed=Subquery(latest_review.values("label")[:1]),
            reviewer_role=Subquery(latest_review.values("reviewer_role")[:1]),
        )
        .order_by("pk")
        .values_list(
            "pk",
            "image_id",
            "image__original_name",
            "box",
            "predicted",
            "confidence",
            "reviewed",
            "reviewer_role",
        )
    )
    threshold = model_version.threshold
    return [
        CellState(
            cell_id=pk,
            image_id=image_id,
            original_name=name,
            box=box,
            predicted=predicted,
            confidence=confidence,
            reviewed=reviewed,
            reviewer_role=role,
            current=current_label(
                predicted=predicted, confidence=confidence, reviewed=reviewed, threshold=threshold
            ),
        )
        for pk, image_id, name, box, predicted, confidence, reviewed, role in rows
    ]


def current_counts(*, batch: Batch) -> Counter[str]:
    """Cells per current label; cells still pending are left out."""
    counts = Counter(state.current for state in batch_cells(batch=batch))
    counts.pop(PENDING, None)
    return counts


def review_labels(*, model_version: ModelVersion) -> list[str]:
    """What a reviewer may choose: the model's classes, then "not classed"."""
    return [*model_version.classes, NOT_CLASSED]


def _normalise_label(label: str, *, model_version: ModelVersion) -> str:
    wanted = label.strip().lower()
    for choice in review_labels(model_version=model_version):
        if choice.lower() == wanted:
            return choice
    raise ServiceError(
        f"{label!r} is not a class of model {model_version.name}; choose one of "
        f"{', '.join(review_labels(model_version=model_version))}."
    )


def review_cells(
    *, actor: User, cells: Iterable[Cell] | QuerySet[Cell], label: str, via_api: bool = False
) -> list[Review]:
    """Give `cells` (all of one batch) the label `label`, in one transaction.

    One INSERT of reviews and one of audit events (before -> after per cell), then the batch's
    preliminary report is recounted. Refused: for a role that may not review; for cells of
    several batches or of an unfinished batch; a technologist overruling a pathologist's
    review; anyone but a pathologist once the report is signed (that needs an amendment).
    """
    from webportal.reports.services import latest_report, refresh_preliminary_report

    ids = sorted(
        set(cells.values_list("pk", flat=True))
        if isinstance(cells, QuerySet)
        else {cell.pk for cell in cells}
    )
    if not ids:
        raise ServiceError("Select at least one cell.")
    with transaction.atomic():
        batch_ids = set(
            Cell.objects.filter(pk__in=ids).values_list("image__batch_id", flat=True).distinct()
        )
        if len(batch_ids) != 1:
            raise ServiceError("Cells of one batch at a time, please.")
        batch = Batch.objects.select_related("case__lab", "model_version").get(pk=batch_ids.pop())
        lab = batch.case.lab
        role = require_role(
            user=actor, lab=lab, allowed=reviewer_roles(via_api=via_api), action="review cells"
        )
        if batch.status != Batch.Status.DONE:
            raise ServiceError(
                f"The batch is {batch.get_status_display().lower()}: cells can be reviewed "
                "once it is done."
            )
        chosen = _normalise_label(label, model_version=batch.model_version)
        report = latest_report(batch=batch)
        if report is not None and report.is_signed and role != Role.PATHOLOGIST:
            raise ServiceError(
                "The report is signed: only a pathologist may change cells now, "
                "and the change goes into an amendment."
            )
        states = batch_cells(batch=batch, cell_ids=ids)
        if len(states) != len(ids):
            raise ServiceError("Some of the selected cells do not exist.")
        if role == Role.STAFF:
            overruled = sum(1 for state in states if state.reviewer_role == Role.PATHOLOGIST)
            if overruled:
                raise ServiceError(
                    f"{overruled} of the selected cells were reviewed by a pathologist; a "
                    "technologist's first review cannot overrule that."
                )
        reviews = Review.objects.bulk_create(
            [
                Review(cell_id=state.cell_id, reviewer=actor, reviewer_role=role, label=chosen)
                for state in states
            ],
            batch_size=500,
        )
        record_events(
            lab=lab,
            actor=actor,
            action=Action.CELL_REVIEWED,
            changes=[
                (Cell(pk=state.cell_id), {"label": state.current}, {"label": chosen})
                for state in states
            ],
        )
        refresh_preliminary_report(batch=batch)
    return reviews


def review_history(*, cell: Cell) -> QuerySet[Review]:
    return cell.reviews.select_related("reviewer").order_by("-id")
