"""Lab membership and roles: which labs a user may act in, and what they may do there.

Roles are enforced here, in services, not only in templates: every service that changes
clinical or lab data calls `require_role` (or one of the `can_*` helpers) first.

| role        | may                                                                  |
|-------------|----------------------------------------------------------------------|
| staff       | create cases, upload batches, cancel them, first review              |
| pathologist | everything staff may, plus sign and amend reports                    |
| admin       | members and roles, the lab's model and thresholds, reference ranges, |
|             | the audit trail                                                      |
| integrator  | the REST API only (cases, uploads, results); no portal pages         |
"""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from rest_framework.request import Request

from webportal.accounts.models import Lab, Membership, Role

# Who may do what; the services name one of these sets when they call require_role.
CASE_WRITERS = frozenset({Role.STAFF, Role.PATHOLOGIST, Role.INTEGRATOR})
REVIEWERS = frozenset({Role.STAFF, Role.PATHOLOGIST})
SIGNERS = frozenset({Role.PATHOLOGIST})
LAB_ADMINS = frozenset({Role.ADMIN})
PORTAL_USERS = frozenset({Role.STAFF, Role.PATHOLOGIST, Role.ADMIN})


class RoleRequired(PermissionDenied):
    """The user's role in the lab does not allow the action (a 403 in views and the API).

    Only raised for a lab the user belongs to: another lab's objects are not found at all.
    """


def labs_of(*, user: User) -> QuerySet[Lab]:
    return Lab.objects.filter(memberships__user=user).order_by("name")


def labs_where(*, user: User, allowed: Iterable[str]) -> QuerySet[Lab]:
    """The labs in which the user holds one of the allowed roles."""
    return labs_of(user=user).filter(memberships__role__in=list(allowed))


def role_in(*, user: User, lab: Lab) -> Role | None:
    """The user's role in the lab, or None when they are not a member."""
    role = (
        Membership.objects.filter(user=user, lab=lab).values_list("role", flat=True).first()
        if user.is_authenticated
        else None
    )
    return Role(role) if role is not None else None


def _describe(allowed: Iterable[str]) -> str:
    labels = [str(Role(role).label).lower() for role in Role.values if role in set(allowed)]
    return " or ".join(labels) or "no role"


def require_role(*, user: User, lab: Lab, allowed: Iterable[str], action: str = "do this") -> Role:
    """The user's role in the lab if it is one of `allowed`; otherwise RoleRequired with a
    message that says which role the action needs."""
    allowed = frozenset(allowed)
    role = role_in(user=user, lab=lab)
    if role is None or role not in allowed:
        raise RoleRequired(f"Only a {_describe(allowed)} of {lab} may {action}.")
    return role


def can_write_cases(*, user: User, lab: Lab) -> bool:
    return role_in(user=user, lab=lab) in CASE_WRITERS


def can_review(*, user: User, lab: Lab) -> bool:
    return role_in(user=user, lab=lab) in REVIEWERS


def can_sign(*, user: User, lab: Lab) -> bool:
    return role_in(user=user, lab=lab) in SIGNERS


def can_admin_lab(*, user: User, lab: Lab) -> bool:
    return role_in(user=user, lab=lab) in LAB_ADMINS


def uses_portal(*, user: User) -> bool:
    """False for a user who is only an integrator (in every lab): the API is theirs."""
    roles = set(Membership.objects.filter(user=user).values_list("role", flat=True))
    return not roles or bool(roles & PORTAL_USERS)


def add_member(*, lab: Lab, user: User, role: str = Role.STAFF) -> Membership:
    """Make the user a member with that role: set-up and seeding, no caller to check."""
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
