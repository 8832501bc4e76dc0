"""Recording audit events; every service that changes clinical or lab data calls this."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User
from django.db import models

from webportal.audit.models import AuditEvent

if TYPE_CHECKING:
    # For annotations only: audit sits below accounts (whose services record events).
    from webportal.accounts.models import Lab


def record_event(
    *,
    lab: Lab,
    actor: User | None,
    action: str,
    obj: models.Model,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event; call it inside the transaction of the change it records, so the
    event and the change are committed (or rolled back) together."""
    return AuditEvent.objects.create(
        lab=lab,
        actor=actor,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        before=before,
        after=after,
    )


def record_events(
    *,
    lab: Lab,
    actor: User | None,
    action: str,
    changes: Iterable[tuple[models.Model, dict[str, Any] | None, dict[str, Any] | None]],
) -> list[AuditEvent]:
    """Append one event per (object, before, after) in a single INSERT: a bulk review of 500
    cells is 500 events and one query. Call it inside the transaction of the change."""
    return AuditEvent.objects.bulk_create(
        [
            AuditEvent(
                lab=lab,
                actor=actor,
                action=action,
                object_type=obj._meta.label_lower,
                object_id=str(obj.pk),
                before=before,
                after=after,
            )
            for obj, before, after in changes
        ],
        batch_size=500,
    )
