"""Login lockout (django-axes): per (username, address) pair, plus a limit per address.

- A (username, address) pair is locked after LOGIN_FAILURE_LIMIT wrong passwords within
  LOGIN_LOCKOUT_MINUTES (axes, AXES_LOCKOUT_PARAMETERS): nobody elsewhere can keep a named
  user locked out, and a try during the lockout does not start it again
  (AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT off).
- An address is locked after LOGIN_ADDRESS_FAILURE_LIMIT wrong passwords within the same time,
  whatever the usernames (a password spray from one address), by `PairAndAddressHandler`.
- The lockout page says until when; a lab admin unlocks a member (`unlock_member`); lockouts
  and unlocks are in the audit trail of the user's labs (failures themselves are in axes'
  access attempt and failure log tables).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from axes.handlers.database import AxesDatabaseHandler
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max, Sum
from django.dispatch import receiver
from django.http import HttpRequest
from django.utils import timezone

from webportal.accounts.models import Membership
from webportal.audit.services import record_event

LOCKED_OUT = "login.locked_out"
UNLOCKED = "login.unlocked"


def client_address(request: HttpRequest) -> str | None:
    """The client's address for the lockout (AXES_CLIENT_IP_CALLABLE): the connection's, or,
    behind LOGIN_PROXY_COUNT proxies, the one the outermost proxy saw (each proxy appends the
    address it was connected from to X-Forwarded-For; entries further left are the client's
    own words and are never trusted)."""
    remote = request.META.get("REMOTE_ADDR")
    count = settings.LOGIN_PROXY_COUNT
    if not count:
        return remote
    forwarded = [
        part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
        if part.strip()
    ]  # fmt: skip
    return forwarded[-count] if len(forwarded) >= count else remote


def _window_start() -> datetime:
    return timezone.now() - settings.AXES_COOLOFF_TIME


def address_failures(ip_address: str | None) -> int:
    """Wrong passwords from this address within the lockout time, all usernames together."""
    if not ip_address:
        return 0
    total = AccessAttempt.objects.filter(
        ip_address=ip_address, attempt_time__gte=_window_start()
    ).aggregate(total=Sum("failures_since_start"))["total"]
    return int(total or 0)


def locked_until(*, username: str | None, ip_address: str | None) -> datetime | None:
    """When a try may succeed again (the latest failure that counts, plus the lockout time)."""
    attempts = AccessAttempt.objects.filter(attempt_time__gte=_window_start())
    pair = attempts.filter(username=username, ip_address=ip_address)
    pair_failures = pair.aggregate(total=Sum("failures_since_start"))["total"] or 0
    if pair_failures >= settings.LOGIN_FAILURE_LIMIT:
        last = pair.aggregate(last=Max("attempt_time"))["last"]
    elif address_failures(ip_address) >= settings.LOGIN_ADDRESS_FAILURE_LIMIT:
        last = attempts.filter(ip_address=ip_address).aggregate(last=Max("attempt_time"))["last"]
    else:
        return None
    return None if last is None else last + settings.AXES_COOLOFF_TIME


class PairAndAddressHandler(AxesDatabaseHandler):  # type: ignore[misc]
    """axes' database handler, plus the per-address limit."""

    def is_locked(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> bool:
        if super().is_locked(request, credentials):
            return True
        ip_address = getattr(request, "axes_ip_address", None)
        return address_failures(ip_address) >= settings.LOGIN_ADDRESS_FAILURE_LIMIT


def is_locked(*, username: str) -> bool:
    """Whether any pair of this username is locked now (the members page shows it)."""
    return bool(
        AccessAttempt.objects.filter(username=username, attempt_time__gte=_window_start())
        .filter(failures_since_start__gte=settings.LOGIN_FAILURE_LIMIT)
        .exists()
    )


def _record_in_labs(*, user: User | None, username: str, action: str, actor: User | None,
                    after: dict[str, Any]) -> None:  # fmt: skip
    if user is None:
        return  # an unknown username: axes' own tables keep the record
    for membership in Membership.objects.filter(user=user).select_related("lab"):
        record_event(lab=membership.lab, actor=actor, action=action, obj=user, after=after)


@receiver(user_locked_out)
def _audit_lockout(sender: Any, request: HttpRequest, username: str | None = None,
                   ip_address: str | None = None, **kwargs: Any) -> None:  # fmt: skip
    if not username:
        return
    user = User.objects.filter(username=username).first()
    with transaction.atomic():
        _record_in_labs(user=user, username=username, action=LOCKED_OUT, actor=None,
                        after={"username": username, "address": ip_address})  # fmt: skip


def unlock(*, user: User, actor: User | None) -> int:
    """Lift every lockout of this username (all addresses); audited; the rows removed."""
    with transaction.atomic():
        removed, _ = AccessAttempt.objects.filter(username=user.get_username()).delete()
        _record_in_labs(user=user, username=user.get_username(), action=UNLOCKED, actor=actor,
                        after={"username": user.get_username()})  # fmt: skip
    return int(removed)
