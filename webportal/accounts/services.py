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
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from rest_framework.request import Request

from webportal.accounts.models import Lab, Membership, Role
from webportal.audit.models import Action
from webportal.audit.services import record_event
from webportal.cases.models import ModelVersion

# Who may do what; the services name one of these sets when they call require_role.
CASE_WRITERS = frozenset({Role.STAFF, Role.PATHOLOGIST, Role.INTEGRATOR})
REVIEWERS = frozenset({Role.STAFF, Role.PATHOLOGIST})
SIGNERS = frozenset({Role.PATHOLOGIST})
LAB_ADMINS = frozenset({Role.ADMIN})
PORTAL_USERS = frozenset({Role.STAFF, Role.PATHOLOGIST, Role.ADMIN})
# The agreement between model and reviewers: the lab's pathologists and its quality manager.
QUALITY_READERS = frozenset({Role.PATHOLOGIST, Role.ADMIN})


class RoleRequired(PermissionDenied):
    """The user's role in the lab does not allow the action (a 403 in views and the API).

    Only raised for a lab the user belongs to: another lab's objects are not found at all.
    """


def labs_of(*, user: User) -> QuerySet[Lab]:
    return Lab.objects.filter(memberships__user=user).order_by("name")


def labs_where(*, user: User, allowed: Iterable[str]) -> QuerySet[Lab]:
    """The labs in which the user holds one of the allowed roles.

    One filter() call: the role must be the user's own membership's, not any member's.
    """
    return (
        Lab.objects.filter(memberships__user=user, memberships__role__in=list(allowed))
        .distinct()
        .order_by("name")
    )


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


# --- lab administration (the portal's lab admin pages) ----------------------------------------


class AccountError(Exception):
    """A lab administration request that cannot be carried out, with a message for the user."""


def _membership_values(membership: Membership) -> dict[str, str]:
    return {"username": membership.user.get_username(), "role": membership.role}


def add_member_as_admin(
    *, admin: User, lab: Lab, username: str, role: str, password: str = ""
) -> Membership:
    """Add a user to the lab with a role; a new username needs a password and creates the user.

    Only the lab's admin may; the event names the member and the role.
    """
    require_role(user=admin, lab=lab, allowed=LAB_ADMINS, action="add members")
    username = username.strip()
    if not username:
        raise AccountError("A username is required.")
    if role not in Role.values:
        raise AccountError(f"Unknown role {role!r}.")
    with transaction.atomic():
        user = User.objects.filter(username=username).first()
        created = user is None
        if user is None:
            if not password:
                raise AccountError(
                    f"There is no user {username!r} yet: give a password to create one."
                )
            candidate = User(username=username)
            try:
                validate_password(password, user=candidate)
            except ValidationError as exc:
                raise AccountError(" ".join(exc.messages)) from exc
            user = User.objects.create_user(username=username, password=password)
        elif Membership.objects.filter(user=user, lab=lab).exists():
            raise AccountError(f"{username} is already a member of {lab}.")
        membership = Membership.objects.create(user=user, lab=lab, role=role)
        record_event(
            lab=lab,
            actor=admin,
            action=Action.MEMBER_ADDED,
            obj=membership,
            after={**_membership_values(membership), "new_user": created},
        )
        return membership


def _other_admins(membership: Membership) -> bool:
    return (
        Membership.objects.filter(lab=membership.lab, role=Role.ADMIN)
        .exclude(pk=membership.pk)
        .exists()
    )


def change_role(*, admin: User, membership: Membership, role: str) -> Membership:
    require_role(user=admin, lab=membership.lab, allowed=LAB_ADMINS, action="change roles")
    if role not in Role.values:
        raise AccountError(f"Unknown role {role!r}.")
    with transaction.atomic():
        membership = Membership.objects.select_for_update().get(pk=membership.pk)
        if membership.role == role:
            return membership
        if membership.role == Role.ADMIN and not _other_admins(membership):
            raise AccountError(f"{membership.user} is the last admin of {membership.lab}.")
        before = _membership_values(membership)
        membership.role = role
        membership.save(update_fields=["role"])
        record_event(
            lab=membership.lab,
            actor=admin,
            action=Action.MEMBER_ROLE_CHANGED,
            obj=membership,
            before=before,
            after=_membership_values(membership),
        )
        return membership


def remove_member(*, admin: User, membership: Membership) -> None:
    """Take a user out of the lab; the user and everything they did stay."""
    require_role(user=admin, lab=membership.lab, allowed=LAB_ADMINS, action="remove members")
    with transaction.atomic():
        if membership.role == Role.ADMIN and not _other_admins(membership):
            raise AccountError(f"{membership.user} is the last admin of {membership.lab}.")
        record_event(
            lab=membership.lab,
            actor=admin,
            action=Action.MEMBER_REMOVED,
            obj=membership,
            before=_membership_values(membership),
        )
        membership.delete()


def models_for(*, lab: Lab) -> QuerySet[ModelVersion]:
    """The models a lab may choose: the shared ones and those adapted to its own cells."""
    return ModelVersion.objects.filter(Q(lab=None) | Q(lab=lab)).order_by("-created_at", "-id")


def members_of(*, lab: Lab) -> QuerySet[Membership]:
    return Membership.objects.filter(lab=lab).select_related("user").order_by("user__username")


def activate_model(
    *, admin: User, lab: Lab, model_version: ModelVersion | None, reason: str = ""
) -> Lab:
    """Choose the model the lab's new batches run with (None: the newest shared model now;
    one registered later reaches the lab only by another such choice: `cases.registry`).

    A new model is activated by a person, never silently; batches already uploaded keep
    the model they were uploaded with. A model without a batch guard (`ModelVersion.guard`)
    is refused unless the admin states why (`reason`, kept in the audit event): its batches
    from another microscope or stain would be auto-accepted without any warning.
    """
    require_role(user=admin, lab=lab, allowed=LAB_ADMINS, action="choose the lab's model")
    if model_version is not None and model_version.lab_id not in (None, lab.pk):
        # A model adapted to another lab's cells is that lab's alone.
        raise AccountError(f"{model_version} is not a model of {lab}.")
    chosen = model_version or newest_shared_model()
    reason = reason.strip()
    if chosen is not None and not chosen.has_guard and not reason:
        raise AccountError(
            f"{chosen} has no batch guard: batches unlike its validation cells (another "
            "microscope, stain or camera) would be auto-accepted without a warning. State why "
            "the lab should use it anyway, or choose a model with a guard."
        )
    with transaction.atomic():
        lab = (
            Lab.objects.select_for_update(of=("self",))
            .select_related("active_model")
            .get(pk=lab.pk)
        )
        if lab.active_model == model_version:
            return lab
        before = {"model": str(lab.active_model) if lab.active_model else "newest shared"}
        lab.active_model = model_version
        lab.save(update_fields=["active_model"])
        after: dict[str, str] = {
            "model": str(model_version) if model_version else "newest shared",
            "guard": "yes" if chosen is not None and chosen.has_guard else "none",
        }
        if reason:
            after["reason"] = reason
        record_event(
            lab=lab,
            actor=admin,
            action=Action.MODEL_ACTIVATED,
            obj=lab,
            before=before,
            after=after,
        )
        return lab


def newest_shared_model() -> ModelVersion | None:
    """The newest model every lab may choose (one adapted to a lab never is)."""
    return ModelVersion.objects.filter(lab=None).order_by("-created_at", "-id").first()
