"""The audit trail: who did what to which object, with the values before and after.

Append-only: an event is written once and never changed or removed through the ORM.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class Action(models.TextChoices):
    """The clinical and administrative actions recorded; other modules may add their own
    dotted names (the field is not limited to these, so adding one needs no migration)."""

    CASE_CREATED = "case.created", "Case created"
    BATCH_UPLOADED = "batch.uploaded", "Batch uploaded"
    BATCH_CANCELLED = "batch.cancelled", "Batch cancelled"
    CELL_REVIEWED = "cell.reviewed", "Cell reviewed"
    REPORT_SIGNED = "report.signed", "Report signed"
    REPORT_AMENDED = "report.amended", "Report amended"
    REPORT_DOWNLOADED = "report.downloaded", "Report downloaded"
    MEMBER_ADDED = "member.added", "Member added"
    MEMBER_INVITED = "member.invited", "Member invited"
    INVITATION_DECLINED = "member.invitation_declined", "Invitation declined"
    MEMBER_ROLE_CHANGED = "member.role_changed", "Member's role changed"
    MEMBER_REMOVED = "member.removed", "Member removed"
    MEMBER_PERSON_CHANGED = "member.person_changed", "Member's name and title changed"
    LAB_DETAILS_CHANGED = "lab.details_changed", "Lab's details changed"
    MODEL_ACTIVATED = "model.activated", "Model activated"
    MODEL_PINNED = "model.pinned", "Model kept when a new one was registered"
    THRESHOLD_CHANGED = "threshold.changed", "Threshold changed"
    REFERENCE_RANGE_CHANGED = "reference_range.changed", "Reference range changed"
    ADAPTATION_STARTED = "adaptation.started", "Adaptation started"
    ADAPTATION_FINISHED = "adaptation.finished", "Adaptation finished"
    ADAPTATION_FAILED = "adaptation.failed", "Adaptation failed"
    ADAPTATION_ACTIVATED = "adaptation.activated", "Adapted model activated"
    ADAPTATION_DECLINED = "adaptation.declined", "Adapted model not used"


class AppendOnlyError(Exception):
    """Raised on any attempt to change or remove an audit event."""


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Audit events are never updated.")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("Audit events are never deleted.")


class AuditEvent(models.Model):
    lab = models.ForeignKey("accounts.Lab", on_delete=models.PROTECT, related_name="+")
    # None: the system itself (a worker, a management command).
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    action = models.CharField(max_length=50)
    # "app_label.model" and the primary key as text, so any object can be named.
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64)
    before = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    after = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["lab", "-created_at"], name="audit_lab_created"),
            models.Index(fields=["object_type", "object_id"], name="audit_object"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}#{self.object_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("Audit events are never updated.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("Audit events are never deleted.")

    @property
    def action_label(self) -> str:
        try:
            return str(Action(self.action).label)
        except ValueError:
            return self.action
