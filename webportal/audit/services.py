"""Recording audit events; every service that changes clinical or lab data calls this."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import models

from webportal.accounts.models import Lab
from webportal.audit.models import AuditEvent


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
