"""The audit trail in words (issue 19): what happened and what changed as a lab admin reads
them, not as the code stores them ("report.edited", {'wbc_count': None, 'new_user': True})."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.apps import apps

from webportal.audit.models import Action, AuditEvent

# Actions recorded under a dotted name that Action does not list.
MORE_ACTIONS = {
    "report.edited": "Report remarks edited",
    "batch.confirmed": "Repeat upload classified anyway",
    "token.issued": "API token issued",
    "token.revoked": "API token revoked",
    "webhook.registered": "Webhook registered",
    "webhook.removed": "Webhook removed",
}

# What a stored key means; any other key is spelt out ("clinical_note" -> "Clinical note").
FIELDS = {
    "wbc_count": "WBC count (x10^9/L)",
    "corrected_wbc_count": "WBC count corrected for NRBC",
    "new_user": "New user",
    "low": "Low %",
    "high": "High %",
    "low_absolute": "Low x10^9/L",
    "high_absolute": "High x10^9/L",
    "accreditation": "Accreditation number",
    "director": "Laboratory director",
    "ood_check": "Batch check",
    "url": "URL",
    "id": "Id",
}


def action_words(code: str) -> str:
    try:
        return str(Action(code).label)
    except ValueError:
        pass
    if code in MORE_ACTIONS:
        return MORE_ACTIONS[code]
    return code.replace(".", " ").replace("_", " ").capitalize()


def object_words(object_type: str) -> str:
    """The object's kind by its model's own name ("cases.case": "Case"), else the code."""
    try:
        model = apps.get_model(object_type)
    except (LookupError, ValueError):
        return object_type
    return str(model._meta.verbose_name).capitalize()


def field_words(key: str) -> str:
    return FIELDS.get(key, key.replace("_", " ").capitalize())


def value_words(value: Any) -> str:
    """A stored value as text: yes/no, a dash for nothing, lists and mappings spelt out."""
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping):
        # In name order: PostgreSQL's jsonb keeps keys in its own order, not the one written.
        return ", ".join(f"{key} {value_words(item)}" for key, item in sorted(value.items()))
    if isinstance(value, list | tuple):
        return ", ".join(value_words(item) for item in value)
    return str(value)


@dataclass(frozen=True)
class EventInWords:
    event: AuditEvent
    action: str
    object: str
    before: list[tuple[str, str]]
    after: list[tuple[str, str]]


def _pairs(values: Any) -> list[tuple[str, str]]:
    if not values:
        return []
    if not isinstance(values, Mapping):
        return [("Value", value_words(values))]
    return [(field_words(str(key)), value_words(value)) for key, value in values.items()]


def in_words(event: AuditEvent) -> EventInWords:
    return EventInWords(
        event=event,
        action=action_words(event.action),
        object=f"{object_words(event.object_type)} #{event.object_id}",
        before=_pairs(event.before),
        after=_pairs(event.after),
    )
