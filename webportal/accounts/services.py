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
from typing import Any

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from rest_framework.request import Request

from webportal.accounts.models import Invitation, Lab, Membership, Profile, Role
from webportal.audit.models import Action
from webportal.audit.services import record_event
from webportal.core.errors import ApplicationError

# Who may do what; the services name one of these sets when they call require_role.
CASE_WRITERS = frozenset({Role.STAFF, Role.PATHOLOGIST, Role.INTEGRATOR})
# A person verifies; a machine never does (DESIGN.md, "Rules of trust"): reviews, report
# remarks, signatures and amendments are a named person's, through their session or their
# own personal token, never the integrator (service) account's, whatever the channel.
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
    if role == Role.INTEGRATOR and role not in allowed:
        raise RoleRequired(
            f"A service (integrator) token may not {action}: only a person may, through their "
            f"own session or personal token (a {_describe(allowed)} of {lab})."
        )
    if role is None or role not in allowed:
        raise RoleRequired(f"Only a {_describe(allowed)} of {lab} may {action}.")
    return role


def reviewer_roles(*, via_api: bool = False) -> frozenset[str]:
    """What may be done through a token as through the portal: review cells and edit a
    preliminary report's remarks. Staff (first review) and pathologists, through the portal or
    their personal token alike; never the integrator (service) account, whatever `via_api`."""
    return REVIEWERS


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


class AccountError(ApplicationError):
    """A lab administration request that cannot be carried out, with a message for the user."""


def _membership_values(membership: Membership) -> dict[str, str]:
    return {"username": membership.user.get_username(), "role": membership.role}


INVITED = (
    "{username} is invited as {role}: the invitation takes effect when the account of that name "
    "accepts it on its Invitations page. To create a new account instead, give a new username "
    "and a password."
)


def add_member_as_admin(
    *, admin: User, lab: Lab, username: str, role: str, password: str = ""
) -> Membership | Invitation:
    """Add someone to the lab with a role, or invite them.

    A new username with a password creates the account and its membership at once. Any other
    name becomes an invitation that the account of that name must accept: a lab admin never
    takes someone (from another lab, or anywhere) into the lab alone. The answer is the same
    invitation whether or not the name exists, so the form does not tell which usernames do.
    Only the lab's admin may; the event names the member (or the invitation) and the role.
    """
    require_role(user=admin, lab=lab, allowed=LAB_ADMINS, action="add members")
    username = username.strip()
    if not username:
        raise AccountError("A username is required.")
    if role not in Role.values:
        raise AccountError(f"Unknown role {role!r}.")
    with transaction.atomic():
        user = User.objects.filter(username=username).first()
        if user is not None and Membership.objects.filter(user=user, lab=lab).exists():
            raise AccountError(f"{username} is already a member of {lab}.")
        if user is None and password:
            candidate = User(username=username)
            try:
                validate_password(password, user=candidate)
            except ValidationError as exc:
                raise AccountError(" ".join(exc.messages)) from exc
            user = User.objects.create_user(username=username, password=password)
            membership = Membership.objects.create(user=user, lab=lab, role=role)
            record_event(
                lab=lab,
                actor=admin,
                action=Action.MEMBER_ADDED,
                obj=membership,
                after={**_membership_values(membership), "new_user": True},
            )
            return membership
        invitation = Invitation.objects.create(
            lab=lab, username=username, role=role, invited_by=admin
        )
        record_event(
            lab=lab,
            actor=admin,
            action=Action.MEMBER_INVITED,
            obj=invitation,
            after={"username": username, "role": role},
        )
        return invitation


def invitations_for(*, user: User) -> QuerySet[Invitation]:
    """The invitations waiting for this account's answer."""
    return Invitation.objects.filter(
        username=user.get_username(), answered_at__isnull=True
    ).select_related("lab", "invited_by")


def answer_invitation(*, user: User, invitation: Invitation, accept: bool) -> Membership | None:
    """The invited account accepts (a membership with the offered role) or declines; audited."""
    if invitation.username != user.get_username():
        raise PermissionDenied("This invitation is not yours.")
    with transaction.atomic():
        invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
        if invitation.answered_at is not None:
            raise AccountError("This invitation was answered already.")
        invitation.answered_at = timezone.now()
        invitation.accepted = accept
        invitation.save(update_fields=["answered_at", "accepted"])
        if not accept:
            record_event(
                lab=invitation.lab, actor=user, action=Action.INVITATION_DECLINED,
                obj=invitation, after={"username": invitation.username, "role": invitation.role},
            )  # fmt: skip
            return None
        membership, created = Membership.objects.get_or_create(
            user=user, lab=invitation.lab, defaults={"role": invitation.role}
        )
        if created:
            record_event(
                lab=invitation.lab,
                actor=user,
                action=Action.MEMBER_ADDED,
                obj=membership,
                after={**_membership_values(membership), "new_user": False,
                       "invited_by": invitation.invited_by.get_username()
                       if invitation.invited_by else None},
            )  # fmt: skip
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


def members_of(*, lab: Lab) -> QuerySet[Membership]:
    return Membership.objects.filter(lab=lab).select_related("user").order_by("user__username")


# --- what a report says of the lab and of its signer (issue 19, ISO 15189:2022 7.4.1.6) -------

LAB_DETAILS = ("address", "accreditation", "director", "nrbc_correction_from")


def update_lab_details(
    *,
    admin: User,
    lab: Lab,
    address: str,
    accreditation: str,
    director: str,
    nrbc_correction_from: int | None = 5,
) -> Lab:
    """The lab's address, accreditation number and director, as its reports print them, and
    from how many NRBC per 100 WBC its reports correct the WBC count (None: never)."""
    require_role(user=admin, lab=lab, allowed=LAB_ADMINS, action="change the lab's details")
    values: dict[str, Any] = {
        "address": "\n".join(line.strip() for line in address.strip().splitlines()),
        "accreditation": " ".join(accreditation.split()),
        "director": " ".join(director.split()),
        "nrbc_correction_from": nrbc_correction_from,
    }
    if nrbc_correction_from is not None and not 1 <= nrbc_correction_from <= 100:
        raise AccountError("Correct the WBC count from 1 to 100 NRBC per 100 WBC, or never.")
    for name, limit in (("accreditation", 100), ("director", 200)):
        if len(values[name]) > limit:
            raise AccountError(f"The {name} has at most {limit} characters.")
    with transaction.atomic():
        lab = Lab.objects.select_for_update(of=("self",)).get(pk=lab.pk)
        before = {name: getattr(lab, name) for name in LAB_DETAILS}
        if before == values:
            return lab
        for name, value in values.items():
            setattr(lab, name, value)
        lab.save(update_fields=list(LAB_DETAILS))
        record_event(
            lab=lab,
            actor=admin,
            action=Action.LAB_DETAILS_CHANGED,
            obj=lab,
            before={name: value for name, value in before.items() if value != values[name]},
            after={name: value for name, value in values.items() if value != before[name]},
        )
        return lab


def _person_values(user: User) -> dict[str, str]:
    profile = Profile.objects.filter(user=user).first()
    return {
        "first_name": user.first_name,
        "last_name": user.last_name,
        "title": profile.title if profile else "",
    }


def update_person(
    *, admin: User, membership: Membership, first_name: str, last_name: str, title: str
) -> User:
    """A member's full name and title, as the reports they sign print them. The user is one
    person in every lab they belong to: the change shows in all of them, and is recorded in
    the trail of the lab whose admin made it."""
    lab = membership.lab
    require_role(user=admin, lab=lab, allowed=LAB_ADMINS, action="change members' names")
    values = {
        "first_name": " ".join(first_name.split()),
        "last_name": " ".join(last_name.split()),
        "title": " ".join(title.split()),
    }
    for name, limit in (("first_name", 150), ("last_name", 150), ("title", 100)):
        if len(values[name]) > limit:
            raise AccountError(f"The {name.replace('_', ' ')} has at most {limit} characters.")
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=membership.user_id)
        before = _person_values(user)
        if before == values:
            return user
        user.first_name, user.last_name = values["first_name"], values["last_name"]
        user.save(update_fields=["first_name", "last_name"])
        Profile.objects.update_or_create(user=user, defaults={"title": values["title"]})
        record_event(
            lab=lab,
            actor=admin,
            action=Action.MEMBER_PERSON_CHANGED,
            obj=membership,
            before={"username": user.get_username(), **before},
            after={"username": user.get_username(), **values},
        )
        return user


def locked_members(*, lab: Lab) -> set[int]:
    """The ids of the lab's memberships whose username is locked out of logging in now."""
    from webportal.accounts import lockout

    return {m.pk for m in members_of(lab=lab) if lockout.is_locked(username=m.user.get_username())}


def unlock_member(*, admin: User, membership: Membership) -> int:
    """A lab admin lets a locked-out member log in again at once (audited in their labs)."""
    from webportal.accounts import lockout

    require_role(user=admin, lab=membership.lab, allowed=LAB_ADMINS, action="unlock members")
    return lockout.unlock(user=membership.user, actor=admin)


# --- a lab's first day (manage.py create_lab) ------------------------------------------------


def create_lab(
    *, name: str, slug: str, admin_username: str, admin_password: str = ""
) -> Membership:
    """A new lab and its first lab admin, without Django's admin (`manage.py create_lab`).

    The admin is a new user (`admin_password` required, checked by the password validators)
    or an existing one (e.g. the admin of another lab, who then administers both). A lab of
    that name or slug already existing is refused: nothing is changed. Audited as the system.
    """
    name, slug, admin_username = name.strip(), slug.strip(), admin_username.strip()
    if not (name and slug and admin_username):
        raise AccountError("A lab name, a slug and an admin username are required.")
    with transaction.atomic():
        if Lab.objects.filter(Q(name=name) | Q(slug=slug)).exists():
            raise AccountError(f"A lab named {name!r} or with the slug {slug!r} exists already.")
        user = User.objects.filter(username=admin_username).first()
        created = user is None
        if user is None:
            if not admin_password:
                raise AccountError(
                    f"There is no user {admin_username!r} yet: give a password to create one."
                )
            try:
                validate_password(admin_password, user=User(username=admin_username))
            except ValidationError as exc:
                raise AccountError(" ".join(exc.messages)) from exc
            user = User.objects.create_user(username=admin_username, password=admin_password)
        lab = Lab.objects.create(name=name, slug=slug)
        membership = Membership.objects.create(user=user, lab=lab, role=Role.ADMIN)
        record_event(
            lab=lab,
            actor=None,
            action=Action.MEMBER_ADDED,
            obj=membership,
            after={**_membership_values(membership), "new_user": created, "lab_created": True},
        )
        return membership
