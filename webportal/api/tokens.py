"""Integrator tokens: issued for one lab, stored as a sha256, shown once, revocable.

A token reads `hv_<prefix>_<secret>`: the prefix finds the row, the whole token's sha256 is
compared in constant time. Secrets come from `secrets`, 32 random bytes each.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from webportal.accounts.models import Lab, Membership, Role
from webportal.accounts.services import LAB_ADMINS, add_member, require_role
from webportal.api.models import ApiToken
from webportal.audit.services import record_event

TOKEN_PREFIX = "hv_"  # noqa: S105 (the public start of every token, not a secret)
# last_used_at is written at most this often per token: reads must not all become writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenError(Exception):
    """A token request that cannot be carried out, with a message fit to show the user."""


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    # The only time the token exists in clear: give it to the integrator, then forget it.
    plaintext: str


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


PERSON_ROLES = frozenset({Role.STAFF, Role.PATHOLOGIST, Role.ADMIN})


def integrator_user(*, lab: Lab, username: str) -> User:
    """The service account a token acts as: created as an integrator of the lab when new.

    An existing account must already be an integrator of the lab: a service token never acts
    as a person (people and machines apart), and never widens anyone's access.
    """
    username = username.strip()
    if not username:
        raise TokenError("A username for the integrator account is required.")
    with transaction.atomic():
        user = User.objects.filter(username=username).first()
        if user is None:
            user = User.objects.create(username=username)
            user.set_unusable_password()  # integrators never log in to the portal
            user.save(update_fields=["password"])
            add_member(lab=lab, user=user, role=Role.INTEGRATOR)
            return user
        if not Membership.objects.filter(user=user, lab=lab, role=Role.INTEGRATOR).exists():
            # The same words whether the name is a person, another lab's or unknown here.
            raise TokenError(
                f"{username} is not an integrator account of {lab}: choose another name for a "
                "new one. A person makes their own token, on their API tokens page."
            )
        return user


def person_user(*, lab: Lab, username: str, role: str) -> User:
    """An operator's personal token (`issue_token --role`): the person, created with that role
    in the lab if needed (with no usable password until they set one through a reset)."""
    username = username.strip()
    if not username:
        raise TokenError("A username is required.")
    if role not in PERSON_ROLES:
        raise TokenError(f"--role must be one of {', '.join(sorted(PERSON_ROLES))}.")
    with transaction.atomic():
        user, created = User.objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        membership = Membership.objects.filter(user=user, lab=lab).first()
        if membership is None:
            add_member(lab=lab, user=user, role=role)
        elif membership.role != role:
            raise TokenError(
                f"{username} is {membership.get_role_display().lower()} in {lab}, not {role}."
            )
        return user


def _create(
    *, lab: Lab, user: User, name: str, scope: str, created_by: User | None, personal: bool
) -> IssuedToken:
    if scope not in ApiToken.Scope.values:
        raise TokenError(f"Scope must be one of {', '.join(ApiToken.Scope.values)}.")
    prefix = secrets.token_hex(6)
    plaintext = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken.objects.create(
        lab=lab,
        user=user,
        name=(name.strip() or user.get_username())[:100],
        scope=scope,
        prefix=prefix,
        token_sha256=_digest(plaintext),
        created_by=created_by,
    )
    record_event(
        lab=lab,
        actor=created_by,
        action="token.issued",
        obj=token,
        after={"name": token.name, "user": user.get_username(), "scope": scope,
               "prefix": prefix, "personal": personal},
    )  # fmt: skip
    return IssuedToken(token=token, plaintext=plaintext)


def issue_token(
    *,
    lab: Lab,
    username: str,
    name: str = "",
    scope: str = ApiToken.Scope.READ_WRITE,
    created_by: User | None = None,
    role: str | None = None,
) -> IssuedToken:
    """A new token; `created_by` None means an operator (the command), else a lab admin.

    Without `role`: a service token of the lab's integrator account `username` (created when
    new). With `role` (operators only): a personal token of the person `username`, who holds
    that role in the lab (created with it when new). A lab admin makes service tokens only: a
    person's token is made by that person (`issue_personal_token`).
    """
    if created_by is not None:
        require_role(user=created_by, lab=lab, allowed=LAB_ADMINS, action="issue API tokens")
        if role is not None:
            raise TokenError("A person makes their own token, on their API tokens page.")
    with transaction.atomic():
        if role is None:
            user = integrator_user(lab=lab, username=username)
        else:
            user = person_user(lab=lab, username=username, role=role)
        return _create(
            lab=lab, user=user, name=name, scope=scope, created_by=created_by,
            personal=role is not None,
        )  # fmt: skip


def issue_personal_token(
    *, user: User, lab: Lab, name: str = "", scope: str = ApiToken.Scope.READ_WRITE
) -> IssuedToken:
    """A person's own token, made by that person in the portal: it acts as them, with their
    role in the lab (a pathologist's may sign), and dies with their membership."""
    require_role(user=user, lab=lab, allowed=PERSON_ROLES, action="make a personal API token")
    with transaction.atomic():
        return _create(
            lab=lab, user=user, name=name or "personal", scope=scope, created_by=user,
            personal=True,
        )  # fmt: skip


def personal_tokens_of(*, user: User) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(user=user, created_by=user).select_related("lab")


def authenticate(*, plaintext: str) -> ApiToken | None:
    """The active token this plaintext is, or None; records its use."""
    if not plaintext.startswith(TOKEN_PREFIX):
        return None
    prefix, _, secret = plaintext.removeprefix(TOKEN_PREFIX).partition("_")
    if not prefix or not secret:
        return None
    token = (
        ApiToken.objects.select_related("user", "lab")
        .filter(prefix=prefix, revoked_at__isnull=True)
        .first()
    )
    if token is None or not hmac.compare_digest(token.token_sha256, _digest(plaintext)):
        return None
    if (
        not token.user.is_active
        or not Membership.objects.filter(user_id=token.user_id, lab_id=token.lab_id).exists()
    ):
        return None  # the account left the lab: its tokens die with the membership
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def tokens_of(*, lab: Lab) -> QuerySet[ApiToken]:
    return ApiToken.objects.filter(lab=lab).select_related("user", "created_by")


def revoke_token(*, token: ApiToken, actor: User | None = None) -> ApiToken:
    """Revoke at once (the next request with it gets 401); `actor` None: an operator."""
    if actor is not None and actor.pk != token.user_id:  # anyone may revoke their own token
        require_role(user=actor, lab=token.lab, allowed=LAB_ADMINS, action="revoke API tokens")
    with transaction.atomic():
        revoked = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if revoked:
            record_event(
                lab=token.lab, actor=actor, action="token.revoked", obj=token,
                before={"revoked": False}, after={"revoked": True},
            )  # fmt: skip
    token.refresh_from_db()
    return token
