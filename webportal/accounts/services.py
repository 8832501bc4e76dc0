"""Lab membership: which labs a user may act in."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework.request import Request

from webportal.accounts.models import Lab, Membership, Role


def labs_of(*, user: User) -> QuerySet[Lab]:
    return Lab.objects.filter(memberships__user=user).order_by("name")


def add_member(*, lab: Lab, user: User, role: str = Role.STAFF) -> Membership:
    with transaction.atomic():
        membership, _ = Membership.objects.update_or_create(
            lab=lab, user=user, defaults={"role": role}
        )
        return membership


def authenticated_user(request: HttpRequest | Request) -> User:
    """The logged-in user of a request; the login middleware and DRF make anonymity rare here."""
    user = request.user
    if not isinstance(user, User) or not user.is_authenticated:
        raise PermissionDenied("Log in first.")
    return user
