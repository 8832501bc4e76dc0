"""Reading the audit trail: one lab's events, filtered."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from django.db.models import QuerySet

from webportal.audit.models import AuditEvent

if TYPE_CHECKING:
    # For annotations only: audit sits below accounts (whose services record events).
    from webportal.accounts.models import Lab


def events_of(
    *,
    lab: Lab,
    action: str = "",
    actor_id: int | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
    object_type: str = "",
    object_id: str = "",
) -> QuerySet[AuditEvent]:
    """The lab's events, newest first; each filter applies only when given."""
    events = AuditEvent.objects.filter(lab=lab).select_related("actor")
    if action:
        events = events.filter(action=action)
    if actor_id is not None:
        events = events.filter(actor_id=actor_id)
    if date_from is not None:
        events = events.filter(created_at__date__gte=date_from)
    if date_to is not None:
        events = events.filter(created_at__date__lte=date_to)
    if object_type:
        events = events.filter(object_type=object_type)
    if object_id:
        events = events.filter(object_id=object_id.strip())
    return events.order_by("-created_at", "-id")


def object_types_of(*, lab: Lab) -> list[str]:
    return list(
        AuditEvent.objects.filter(lab=lab)
        .order_by("object_type")
        .values_list("object_type", flat=True)
        .distinct()
    )
