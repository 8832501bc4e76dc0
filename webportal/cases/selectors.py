"""Reads of cases, batches, images and cells: one query per question, with the lab rule in it.

Lab isolation lives here: every query a view or the API makes for a user starts from one of
the `*_visible_to` functions, so another lab's object is "not found", never "forbidden". The
latest report is `webportal.reports.services.latest_report`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Case as Choose
from django.db.models import Exists, F, OuterRef, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce

from webportal.accounts.selectors import visible_to
from webportal.cases.models import (
    Batch,
    Case,
    Cell,
    Image,
    ModelVersion,
    Prediction,
    Review,
    Shard,
)
from webportal.core.labels import PENDING as PENDING
from webportal.core.labels import UNIDENTIFIED


def cases_visible_to(*, user: User) -> QuerySet[Case]:
    return visible_to(Case.objects.all(), user=user).select_related("lab", "patient")


def batches_visible_to(*, user: User) -> QuerySet[Batch]:
    return visible_to(Batch.objects.all(), user=user, lab_path="case__lab").select_related(
        "case", "case__lab", "model_version"
    )


def images_visible_to(*, user: User) -> QuerySet[Image]:
    return visible_to(Image.objects.all(), user=user, lab_path="batch__case__lab")


def cells_visible_to(*, user: User) -> QuerySet[Cell]:
    return visible_to(Cell.objects.all(), user=user, lab_path="image__batch__case__lab")


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
    # The batch guard's score of this cell alone (None: not checked) and whether it is above the
    # guard's per-cell limit (Batch.ood_cell_scores, ood_cell_threshold).
    ood_score: float | None = None
    odd: bool = False

    @property
    def confidence_percent(self) -> str:
        return "" if self.confidence is None else f"{100 * self.confidence:.1f}"


def current_label(
    *,
    predicted: str | None,
    confidence: float | None,
    reviewed: str | None,
    threshold: float | None,
    batch_check: str = Batch.Check.NOT_CHECKED,
    odd: bool = False,
) -> str:
    """The one rule of auto-acceptance: a person's latest review, else the model's class when
    its confidence reaches the threshold and the batch guard (Batch.ood_check) allows it.

    A flagged batch auto-accepts nothing (every cell unidentified until reviewed); while the
    guard's verdict is pending, a classified cell stays pending. An odd cell (its own guard
    score above the per-cell limit) is unidentified until reviewed, even in a batch that passed.
    """
    if reviewed:
        return reviewed
    if predicted is None or confidence is None:
        return PENDING
    if batch_check == Batch.Check.PENDING:
        return PENDING
    if batch_check == Batch.Check.FLAGGED or odd:
        return UNIDENTIFIED
    if threshold is not None and confidence < threshold:
        return UNIDENTIFIED
    return predicted


def latest_review() -> QuerySet[Review]:
    """The newest review of the cell of the outer query: a subquery, `.values(field)[:1]`.
    Every "latest review" (labels, agreement, adaptation) reads it from here."""
    return Review.objects.filter(cell=OuterRef("pk")).order_by("-id")


def batch_cells(*, batch: Batch, cell_ids: Collection[int] | None = None) -> list[CellState]:
    """Every cell of the batch (or those of `cell_ids`) with its labels, in one query."""
    model_version: ModelVersion = batch.model_version
    prediction = Prediction.objects.filter(cell=OuterRef("pk"), model_version=model_version)
    latest = latest_review()
    cells: QuerySet[Cell] = Cell.objects.filter(image__batch=batch)
    if cell_ids is not None:
        cells = cells.filter(pk__in=list(cell_ids))
    rows = (
        cells.annotate(
            predicted=Subquery(prediction.values("label")[:1]),
            confidence=Subquery(prediction.values("confidence")[:1]),
            reviewed=Subquery(latest.values("label")[:1]),
            reviewer_role=Subquery(latest.values("reviewer_role")[:1]),
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
    batch_check = batch.ood_check
    scores: dict[str, float] = batch.ood_cell_scores or {}
    limit = batch.ood_cell_threshold

    def odd(pk: int) -> bool:
        score = scores.get(str(pk))
        return limit is not None and score is not None and score > limit

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
                predicted=predicted,
                confidence=confidence,
                reviewed=reviewed,
                threshold=threshold,
                batch_check=batch_check,
                odd=odd(pk),
            ),
            ood_score=scores.get(str(pk)),
            odd=odd(pk),
        )
        for pk, image_id, name, box, predicted, confidence, reviewed, role in rows
    ]


def current_counts(*, batch: Batch) -> Counter[str]:
    """Cells per current label; cells still pending are left out."""
    counts = Counter(state.current for state in batch_cells(batch=batch))
    counts.pop(PENDING, None)
    return counts


def rejected_images(*, batch: Batch) -> QuerySet[Image]:
    return batch.images.filter(status=Image.Status.REJECTED).order_by("id")


def fields_without_white_cells(*, batch: Batch) -> QuerySet[Image]:
    """Whole fields in which the worker located no white cell: said on the batch page, since
    they add nothing to the differential."""
    return batch.images.filter(
        status=Image.Status.OK, kind=Image.Kind.FIELD, white_cells=0
    ).order_by("id")


# --- the queue's bookkeeping ----------------------------------------------------------------


def delivery_limit_reached(*, deliveries: int) -> bool:
    """Whether `deliveries` in a row without progress (the one at hand included) are too many.

    The one rule for poison batches: the claim asks it with the delivery it has just counted,
    the sweeper with the delivery a resend would make.
    """
    return deliveries > settings.BATCH_MAX_STALLED_ATTEMPTS


UNFINISHED = (Batch.Status.QUEUED, Batch.Status.PROCESSING)


def claimable_shards() -> QuerySet[Shard]:
    """Queued shards of unfinished batches in the order workers take them: STAT first, then
    the lab served least recently (a lab never served first: fair share between labs), then
    the oldest batch, then upload order. One query; the claim takes the first."""
    last_served = (
        Shard.objects.filter(lab_id=OuterRef("lab_id"), claimed_at__isnull=False)
        .order_by("-claimed_at")
        .values("claimed_at")[:1]
    )
    return (
        Shard.objects.filter(status=Shard.Status.QUEUED, batch__status__in=UNFINISHED)
        .annotate(
            routine=Choose(When(priority=Batch.Priority.STAT, then=Value(0)), default=Value(1)),
            lab_served=Subquery(last_served),
        )
        .order_by(
            "routine",
            F("lab_served").asc(nulls_first=True),
            "batch_id",
            "first_image_id",
        )
    )


def stuck_shards(*, now: datetime, after_seconds: int) -> QuerySet[Shard]:
    """Claimed shards of unfinished batches with no heartbeat for `after_seconds`: their
    worker died (the sweeper: BATCH_STUCK_AFTER_SECONDS)."""
    before = now - timedelta(seconds=after_seconds)
    return Shard.objects.filter(
        status=Shard.Status.PROCESSING, heartbeat_at__lt=before, batch__status__in=UNFINISHED
    ).order_by("id")


def unclaimed_shards(*, now: datetime, after_seconds: int) -> QuerySet[Shard]:
    """Queued shards of unfinished batches offered more than `after_seconds` ago: their message
    may be lost (the sweeper: BATCH_RESEND_AFTER_SECONDS). One never offered (its message
    failed before it was marked) counts from its creation, with its batch's upload."""
    before = now - timedelta(seconds=after_seconds)
    return (
        Shard.objects.annotate(sent_at=Coalesce("enqueued_at", "created_at"))
        .filter(status=Shard.Status.QUEUED, sent_at__lt=before, batch__status__in=UNFINISHED)
        .order_by("id")
    )


def unfinished_batches_without_work(*, now: datetime, after_seconds: int) -> QuerySet[Batch]:
    """Unfinished batches with no shard left to claim and no heartbeat for `after_seconds`:
    every shard is done but the finish (verdict, report) never committed, or the batch was
    queued before batches had shards. A message makes a worker finish or split it."""
    before = now - timedelta(seconds=after_seconds)
    open_shards = Shard.objects.filter(batch_id=OuterRef("pk")).exclude(status=Shard.Status.DONE)
    return (
        Batch.objects.annotate(
            sent_at=Coalesce("heartbeat_at", "enqueued_at", "created_at"),
            has_open=Exists(open_shards),
        )
        .filter(status__in=UNFINISHED, has_open=False, sent_at__lt=before)
        .order_by("id")
    )
