from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from webportal.api.models import ApiToken

if TYPE_CHECKING:
    from rest_framework.views import APIView


class PerTokenRateThrottle(SimpleRateThrottle):
    """One budget per integrator token (per user for portal sessions, per IP otherwise)."""

    scope = "token"

    def get_cache_key(self, request: Request, view: APIView) -> str:
        if isinstance(request.auth, ApiToken):
            ident = f"token-{request.auth.pk}"
        elif request.user is not None and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            ident = f"ip-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
