"""The outbox both outbound channels share (webhooks, HL7 to a LIS): rows written in the
transaction of the change they report, sent by a periodic poll, claimed before each send.

A delivery model has `status` (with "pending") and `next_attempt_at`; a sender claims a row by
moving `next_attempt_at` past the send's lease with a conditional UPDATE, so the poll and the
after-commit message never both send it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

PENDING = "pending"
# Rows claimed per poll; the rest wait for the next one.
DUE_PER_POLL = 200


def claim(*, model: type[models.Model], delivery_id: int, now: datetime) -> bool:
    """Take the row for one send: only if still pending and due, and only one sender wins."""
    lease = timedelta(seconds=settings.WEBHOOK_TIMEOUT_SECONDS + 60)
    return bool(
        model._default_manager.filter(
            pk=delivery_id, status=PENDING, next_attempt_at__lte=now
        ).update(next_attempt_at=now + lease)
    )


def due(*, model: type[models.Model], limit: int = DUE_PER_POLL) -> list[int]:
    """The ids of the pending rows that are due, oldest first."""
    return list(
        model._default_manager.filter(status=PENDING, next_attempt_at__lte=timezone.now())
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )


def nudge_after_commit(*, send: Callable[[int], None], delivery_ids: list[int], what: str) -> None:
    """After commit, ask a worker to try each new row at once (a shortcut: if the message is
    lost, or the broker is down, the poll sends the row from the database)."""

    def nudge() -> None:
        for delivery_id in delivery_ids:
            try:
                send(delivery_id)
            except Exception:
                logger.warning("%s %s left to the poll", what, delivery_id)

    if delivery_ids:
        transaction.on_commit(nudge)
