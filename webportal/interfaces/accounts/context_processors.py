from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from webportal.accounts.models import Membership


def roles(request: HttpRequest) -> dict[str, object]:
    """`portal_roles`: the roles the user holds in any lab, so the menu shows what they may use.
    Lazy: pages that do not look at it pay no query."""

    def collect() -> frozenset[str]:
        user = getattr(request, "user", None)
        if not isinstance(user, User) or not user.is_authenticated:
            return frozenset()
        return frozenset(Membership.objects.filter(user=user).values_list("role", flat=True))

    return {"portal_roles": SimpleLazyObject(collect)}
