"""Integrator access: API tokens, idempotent uploads and webhooks, each owned by one lab."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from webportal import crypto


class ApiToken(models.Model):
    """A named credential for a lab information system, never for a person.

    Only the sha256 of the token is kept; the token itself is shown once, when it is made.
    `prefix` (the public start of the token) finds the row without scanning hashes.
    """

    class Scope(models.TextChoices):
        READ = "read", "Read only"
        READ_WRITE = "read_write", "Read and write"

    lab = models.ForeignKey("accounts.Lab", on_delete=models.CASCADE, related_name="api_tokens")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=12, choices=Scope.choices, default=Scope.READ_WRITE)
    prefix = models.CharField(max_length=16, unique=True)
    token_sha256 = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def can_write(self) -> bool:
        return self.scope == self.Scope.READ_WRITE


class IdempotencyKey(models.Model):
    """An upload already carried out: a retry with the same key gets the same batch back."""

    lab = models.ForeignKey("accounts.Lab", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # sha256 over the case, the priority and every file's sha256, in order: the same key with
    # a different upload is a client bug, answered 409 rather than silently ignored.
    fingerprint = models.CharField(max_length=64)
    batch = models.ForeignKey("cases.Batch", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["lab", "key"], name="idempotency_key_unique_per_lab")
        ]

    def __str__(self) -> str:
        return f"{self.key} -> batch {self.batch_id}"


class WebhookEndpoint(models.Model):
    class Event(models.TextChoices):
        BATCH_DONE = "batch.done", "Batch done"
        BATCH_FAILED = "batch.failed", "Batch failed"
        REPORT_FINAL = "report.final", "Report signed (final)"
        REPORT_AMENDED = "report.amended", "Report amended"
        REPORT_CRITICAL = "report.critical", "Critical result in a report"

    lab = models.ForeignKey("accounts.Lab", on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500)
    description = models.CharField(max_length=200, blank=True)
    # Empty means every event.
    events = models.JSONField(default=list, blank=True)
    # The signing secret, encrypted (webportal.crypto): the server reads it back to sign.
    # Shown once, when the endpoint is registered; use the `secret` property.
    secret_encrypted = models.TextField(default="", editable=False)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.url

    def wants(self, event: str) -> bool:
        return self.is_active and (not self.events or event in self.events)

    @property
    def secret(self) -> str:
        return crypto.decrypt(self.secret_encrypted)

    @secret.setter
    def secret(self, plaintext: str) -> None:
        self.secret_encrypted = crypto.encrypt(plaintext)


class WebhookDelivery(models.Model):
    """One event for one endpoint, and how its delivery went: the log a lab admin reads."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        # The endpoint was removed before the event could be delivered.
        CANCELLED = "cancelled", "Cancelled"

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_id = models.UUIDField(default=uuid.uuid4, editable=False)
    event = models.CharField(max_length=40)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # The outbox: when the next try is due (None once delivered, failed or cancelled). The
    # periodic task sends what is due; a sender claims a row by moving this on first.
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="webhook_delivery_due",
                condition=models.Q(status="pending"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.endpoint}"


class LisEndpoint(models.Model):
    """A lab information system that takes signed and amended reports as HL7 v2.5.1 ORU^R01
    over MLLP (TCP). Reached only through the outbound rules (webportal.notifications.outbound):
    an address inside the hospital network needs the operator's OUTBOUND_ALLOWED_NETWORKS."""

    lab = models.ForeignKey("accounts.Lab", on_delete=models.CASCADE, related_name="+")
    host = models.CharField(max_length=253)
    port = models.PositiveIntegerField()
    # MSH-5 and MSH-6 of every message: what the LIS expects to be called, if anything.
    receiving_application = models.CharField(max_length=100, blank=True)
    receiving_facility = models.CharField(max_length=100, blank=True)
    is_active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class LisDelivery(models.Model):
    """One report version for one LIS, and how its delivery went (the outbox and its log)."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    endpoint = models.ForeignKey(LisEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    report = models.ForeignKey("reports.Report", on_delete=models.PROTECT, related_name="+")
    # MSH-10: the same on every try of this row, so the LIS can tell a repeat.
    control_id = models.CharField(max_length=40, unique=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # MSA-1 of the last acknowledgement (AA, AE, AR, CA, CE, CR), if one came.
    ack_code = models.CharField(max_length=2, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "LIS deliveries"
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="lis_delivery_due",
                condition=models.Q(status="pending"),
            )
        ]

    def __str__(self) -> str:
        return f"{self.control_id} -> {self.endpoint}"
