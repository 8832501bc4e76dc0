"""Labs and who belongs to them: the unit of data isolation."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils.text import slugify


class Lab(models.Model):
    name = models.CharField(max_length=200, unique=True)
    # The lab's short name in URLs, commands (`issue_token --lab SLUG`) and FHIR identifiers.
    slug = models.SlugField(max_length=50, unique=True)
    # The model this lab's new batches run with; None means the newest shared model
    # (ModelVersion.lab None).
    active_model = models.ForeignKey(
        "cases.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # What a report says of the lab that issued it (ISO 15189:2022 7.4.1.6), set by a lab
    # admin (services.update_lab_details, audited).
    address = models.TextField(blank=True)
    accreditation = models.CharField("accreditation number", max_length=100, blank=True)
    director = models.CharField("laboratory director", max_length=200, blank=True)
    # From how many nucleated red cells per 100 WBC the analyser's WBC count is corrected for
    # them (reports.differential.corrected_wbc); None: never (the lab's analyser already
    # excludes them from its WBC count). 5 is the usual manual-differential rule.
    nrbc_correction_from = models.PositiveSmallIntegerField(
        "correct the WBC count from NRBC per 100 WBC", null=True, blank=True, default=5
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.slug:
            self.slug = unique_slug(self.name)
        super().save(*args, **kwargs)


def unique_slug(name: str) -> str:
    """A slug from the lab's name, numbered when another lab has it already."""
    base = slugify(name)[:40] or "lab"
    slug, n = base, 2
    while Lab.objects.filter(slug=slug).exists():
        slug, n = f"{base}-{n}", n + 1
    return slug


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


class Invitation(models.Model):
    """A lab admin's offer of a role to a username; it becomes a membership only when the
    account of that name accepts it (a lab admin never takes someone into their lab alone)."""

    lab = models.ForeignKey(Lab, on_delete=models.CASCADE, related_name="invitations")
    username = models.CharField(max_length=150)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.STAFF)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    accepted = models.BooleanField(null=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.username} invited to {self.lab} ({self.role})"


class Profile(models.Model):
    """What a report prints of a person beside their full name (User.first_name, last_name):
    their title, e.g. "Consultant haematologist". Set by a lab admin (services.update_person)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    title = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return f"{self.user}: {self.title}"


def person_line(user: Any) -> str:
    """A person as a signed report names them: "Ada Lovelace, Consultant haematologist"; the
    login name only when no full name is on record."""
    if user is None:
        return ""
    name = str(user.get_full_name() or user.get_username())
    try:
        title = user.profile.title
    except Profile.DoesNotExist:
        title = ""
    return f"{name}, {title}" if title else name
