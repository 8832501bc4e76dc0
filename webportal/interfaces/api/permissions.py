from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from webportal.api.models import ApiToken

if TYPE_CHECKING:
    from rest_framework.views import APIView


class TokenScope(BasePermission):
    """A read-only token reads; writing needs a read-write token (or a portal session)."""

    message = "This token is read-only."

    def has_permission(self, request: Request, view: APIView) -> bool:
        if request.method in SAFE_METHODS or not isinstance(request.auth, ApiToken):
            return True
        return request.auth.can_write
