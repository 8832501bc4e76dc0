"""Reads of cases, batches, images and cells: one query per question, with the lab rule in it.

Lab isolation lives here: every query a view or the API makes for a user starts from one of
the `*_visible_to` functions, so another lab's object is "not found", never "forbidden". The
cell list of a batch page is `reviews.batch_cells`; the latest report
`webportal.reports.services.latest_report`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet

from webportal.cases.models import Batch, Case, Image


def cases_visible_to(*, user: User) -> QuerySet[Case]:
    return Case.objects.filter(lab__memberships__user=user).select_related("lab", "patient")


def batches_visible_to(*, user: User) -> QuerySet[Batch]:
    return Batch.objects.filter(case__lab__memberships__user=user).select_related(
        "case", "case__lab", "model_version"
    )


def images_visible_to(*, user: User) -> QuerySet[Image]:
    return Image.objects.filter(batch__case__lab__memberships__user=user)


def rejected_images(*, batch: Batch) -> QuerySet[Image]:
    return batch.images.filter(status=Image.Status.REJECTED).order_by("id")


# --- the queue's bookkeeping ----------------------------------------------------------------


def delivery_limit_reached(*, deliveries: int) -> bool:
    """Whether `deliveries` in a row without progress (the one at hand included) are too many.

    The one rule for poison batches: the claim asks it with the delivery it has just counted,
    the sweeper with the delivery a resend would make.
    """
    return deliveries > settings.BATCH_MAX_STALLED_ATTEMPTS


def stuck_batches(*, now: datetime, after_seconds: int) -> QuerySet[Batch]:
    """Processing batches with no heartbeat for `after_seconds`: their worker died
    (the sweeper: BATCH_STUCK_AFTER_SECONDS)."""
    before = now - timedelta(seconds=after_seconds)
    return Batch.objects.filter(status=Batch.Status.PROCESSING, heartbeat_at__lt=before)


def unclaimed_batches(*, now: datetime, after_seconds: int) -> QuerySet[Batch]:
    """Queued batches sent more than `after_seconds` ago: their message may be lost
    (the sweeper: BATCH_RESEND_AFTER_SECONDS)."""
    before = now - timedelta(seconds=after_seconds)
    return Batch.objects.filter(status=Batch.Status.QUEUED, enqueued_at__lt=before)
