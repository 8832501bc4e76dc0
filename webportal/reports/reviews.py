"""Reviews: a person's word on cells, and the current label of every cell of a batch.

The current label of a cell is its latest review, else its prediction from the batch's model,
or "unidentified" when that prediction's calibrated confidence is under the model's threshold.
Reviews are appended, never edited; predictions are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet

from webportal.accounts.models import Lab, Role
from webportal.accounts.services import require_role, reviewer_roles
from webportal.audit.models import Action
from webportal.audit.services import record_event, record_events
from webportal.cases.models import Batch, Cell, Image, ModelVersion, Review
from webportal.cases.selectors import (
    PENDING,
    CellState,
    batch_cells,
    current_counts,
    current_label,
)
from webportal.core.errors import ServiceError
from webportal.reports.services import latest_report, refresh_preliminary_report, vocabulary_for
from webportal.reports.vocabulary import find_label, review_choices

# The reads of cells and their current labels are selectors; named here too for callers.
__all__ = [
    "PENDING",
    "CellState",
    "add_missed_cell",
    "batch_cells",
    "current_counts",
    "current_label",
    "review_cells",
    "review_labels",
    "reviewer_roles",
]


def review_labels(*, model_version: ModelVersion, lab: Lab) -> list[str]:
    """What a reviewer may choose: the lab's vocabulary (the model's classes, the morphology
    categories the model lacks, the lab's own; reports.vocabulary), then "not classed"."""
    return review_choices(vocabulary_for(lab=lab, model_version=model_version))


def _normalise_label(label: str, *, model_version: ModelVersion, lab: Lab) -> str:
    vocabulary = vocabulary_for(lab=lab, model_version=model_version)
    found = find_label(label, vocabulary)
    if found is None:
        raise ServiceError(
            f"{label!r} is not in the lab's cell vocabulary; choose one of "
            f"{', '.join(review_choices(vocabulary))}."
        )
    return found


def review_cells(
    *, actor: User, cells: Iterable[Cell] | QuerySet[Cell], label: str, via_api: bool = False
) -> list[Review]:
    """Give `cells` (all of one batch) the label `label`, in one transaction.

    One INSERT of reviews and one of audit events (before -> after per cell), then the batch's
    preliminary report is recounted. Refused: for a role that may not review; for cells of
    several batches or of an unfinished batch; a technologist overruling a pathologist's
    review; anyone but a pathologist once the report is signed (that needs an amendment).
    """
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
        chosen = _normalise_label(label, model_version=batch.model_version, lab=lab)
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


CELL_ADDED = "cell.added"  # an audit action: a reviewer drew a white cell the locator missed
MIN_DRAWN_SIDE = 8  # pixels: a smaller drawn box is a slip of the mouse


def add_missed_cell(
    *, actor: User, image: Image, box: Sequence[int], label: str, via_api: bool = False
) -> Cell:
    """A white cell the locator missed in a field, drawn by a reviewer: a new Cell with its
    box (x, y, width, height in the field's pixels) and the reviewer's label as its review.

    Audited (the cell added, then its label as any review) and counted in the differential at
    once. The same rules as review_cells: a reviewer's role, a finished batch, a pathologist
    once the report is signed. A box outside the field or too small is refused.
    """
    if image.kind != Image.Kind.FIELD:
        raise ServiceError("Cells can be added to whole fields only.")
    x, y, width, height = (int(v) for v in box)
    if width < MIN_DRAWN_SIDE or height < MIN_DRAWN_SIDE:
        raise ServiceError(f"Draw a box at least {MIN_DRAWN_SIDE} pixels wide and high.")
    if x < 0 or y < 0 or x + width > (image.width or 0) or y + height > (image.height or 0):
        raise ServiceError("The box must lie inside the field.")
    with transaction.atomic():
        batch = Batch.objects.select_related("case__lab").get(pk=image.batch_id)
        require_role(
            user=actor,
            lab=batch.case.lab,
            allowed=reviewer_roles(via_api=via_api),
            action="add cells",
        )
        cell = Cell.objects.create(
            image=image, box=[x, y, width, height], origin=Cell.Origin.REVIEWER
        )
        record_event(
            lab=batch.case.lab,
            actor=actor,
            action=CELL_ADDED,
            obj=cell,
            after={"image": image.original_name, "box": [x, y, width, height]},
        )
        # Labels, checks and the recount as for any review; an error undoes the new cell.
        review_cells(actor=actor, cells=[cell], label=label, via_api=via_api)
    return cell


def review_history(*, cell: Cell) -> QuerySet[Review]:
    return cell.reviews.select_related("reviewer").order_by("-id")
