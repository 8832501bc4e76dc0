"""Adapting a model to a lab: one row per request of a lab admin, followed by the worker."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AdaptationJob(models.Model):
    """An adaptation of a base model to a lab's reviewed cells (ADAPT_METHOD: ml.adapt's
    few-cell method, or ml.train --init), run by a worker on the `adapt` queue; the result is
    a new ModelVersion of that lab, inactive until an admin activates it."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done: waiting for a decision"
        ACTIVATED = "activated", "Activated"
        DECLINED = "declined", "Not activated"
        FAILED = "failed", "Failed"

    class Stage(models.TextChoices):
        WAITING = "waiting", "Waiting for the adaptation worker"
        EXPORTING = "exporting", "Exporting the reviewed cells"
        TRAINING = "training", "Fine-tuning"
        EVALUATING = "evaluating", "Evaluating on the held-out cells"
        REGISTERING = "registering", "Registering the new model"
        FINISHED = "finished", "Finished"

    lab = models.ForeignKey("accounts.Lab", on_delete=models.PROTECT, related_name="+")
    base_model = models.ForeignKey("cases.ModelVersion", on_delete=models.PROTECT, related_name="+")
    result_model = models.ForeignKey(
        "cases.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    stage = models.CharField(max_length=12, choices=Stage.choices, default=Stage.WAITING)
    # The split decided when the job was started (selectors.adaptation_plan): class -> counts
    # of training and held-out cells, the classes left out and why, how the split grouped.
    plan = models.JSONField(default=dict)
    # Epochs done / planned while training; the held-out figures of both models when done.
    epochs_done = models.PositiveIntegerField(default=0)
    epochs_planned = models.PositiveIntegerField(default=0)
    figures = models.JSONField(default=dict)
    error = models.TextField(blank=True)
    deliveries = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["lab", "status"], name="adaptation_lab_status")]

    def __str__(self) -> str:
        return f"Adaptation {self.pk} of {self.base_model.name} to {self.lab}"

    @property
    def is_active(self) -> bool:
        return self.status in {self.Status.QUEUED, self.Status.RUNNING}

    @property
    def progress_percent(self) -> int:
        """A rough share of the work done: training is most of it."""
        if not self.is_active:
            return 100
        if self.stage == self.Stage.TRAINING and self.epochs_planned:
            return 10 + round(80 * min(self.epochs_done, self.epochs_planned) / self.epochs_planned)
        return {
            self.Stage.WAITING: 0,
            self.Stage.EXPORTING: 5,
            self.Stage.EVALUATING: 92,
            self.Stage.REGISTERING: 98,
        }.get(self.Stage(self.stage), 10)
