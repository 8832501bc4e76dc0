"""Labs and who belongs to them: the unit of data isolation."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Lab(models.Model):
    name = models.CharField(max_length=200, unique=True)
    # The model this lab's new batches run with; None means the newest registered model.
    active_model = models.ForeignKey(
        "cases.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    STAFF = "staff", "Lab staff"
    PATHOLOGIST = "pathologist", "Pathologist"
    ADMIN = "admin", "Lab admin"
    INTEGRATOR = "integrator", "Integrator"


class Membership(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.STAFF)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "lab"], name="one_membership_per_user_and_lab")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.lab} ({self.role})"
