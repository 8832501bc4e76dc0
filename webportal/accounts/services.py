"""Lab membership: which labs a user may act in."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet

from webportal.accounts.models import Lab, Membership, Role


def labs_of(*, user: AbstractBaseUser) -> QuerySet[Lab]:
    return Lab.objects.filter(memberships__user=user).order_by("name")


def add_member(*, lab: Lab, user: AbstractBaseUser, role: str = Role.STAFF) -> Membership:
    with transaction.atomic():
        membership, _ = Membership.objects.update_or_create(
            lab=lab, user=user, defaults={"role": role}
        )
        return membership
