"""Reports: a snapshot of a batch's differential, versioned, never edited in place."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Report(models.Model):
    class Status(models.TextChoices):
        PRELIMINARY = "preliminary", "Preliminary"
        FINAL = "final", "Final"
        AMENDED = "amended", "Amended"

    batch = models.ForeignKey("cases.Batch", on_delete=models.PROTECT, related_name="reports")
    version = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PRELIMINARY)
    model_version = models.ForeignKey(
        "cases.ModelVersion", on_delete=models.PROTECT, related_name="+"
    )
    # [{"label": ..., "count": ..., "percent": ...}, ...] in the model's class order,
    # with "unidentified" last: cells below the model's confidence threshold.
    differential = models.JSONField()
    total_cells = models.PositiveIntegerField()
    comment = models.TextField(blank=True)
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "version"], name="one_report_per_version")
        ]

    def __str__(self) -> str:
        return f"Report v{self.version} of batch {self.batch_id}"
