"""Labs in Django's admin (an operator's tool): a lab is created here, and its first members
added; nothing clinical or already granted changes here without the services' rules.

- the lab's model (`active_model`) is read-only: a lab admin chooses it in the portal
  (services.activate_model: a model adapted to another lab is refused, audited);
- existing memberships are read-only and cannot be deleted (roles change in the portal, with
  the last-admin rule and the audit trail); new ones may be added, each audited as the
  operator's `member.added`.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.models import User
from django.db import transaction
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest

from webportal.accounts.models import Invitation, Lab, Membership
from webportal.admin import ReadOnlyAdmin
from webportal.audit.models import Action
from webportal.audit.services import record_event


def _actor(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


class MembershipInline(admin.TabularInline[Membership, Lab]):
    model = Membership
    extra = 1

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Lab)
class LabAdmin(admin.ModelAdmin[Lab]):
    list_display = ["name", "slug", "active_model", "created_at"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Lab | None = None) -> list[str]:
        # The slug names the lab in tokens' commands and FHIR identifiers: fixed once made.
        return ["active_model", "slug"] if obj is not None else ["active_model"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: Lab, form: ModelForm[Lab], change: bool
    ) -> None:
        with transaction.atomic():
            before = {"name": Lab.objects.get(pk=obj.pk).name} if change and obj.pk else None
            super().save_model(request, obj, form, change)
            record_event(
                lab=obj, actor=_actor(request),
                action="lab.changed" if change else "lab.created", obj=obj, before=before,
                after={"name": obj.name, "slug": obj.slug, "via": "admin"},
            )  # fmt: skip

    def save_formset(
        self, request: HttpRequest, form: Any, formset: BaseInlineFormSet[Any, Any, Any],
        change: bool,
    ) -> None:  # fmt: skip
        with transaction.atomic():
            for membership in formset.save():
                record_event(
                    lab=membership.lab,
                    actor=_actor(request),
                    action=Action.MEMBER_ADDED,
                    obj=membership,
                    after={"username": membership.user.get_username(), "role": membership.role,
                           "new_user": False, "via": "admin"},
                )  # fmt: skip


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdmin[Invitation]):
    list_display = ["username", "lab", "role", "invited_by", "created_at", "accepted"]
    list_filter = ["lab"]
