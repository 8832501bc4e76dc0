"""Integrators use the API only: a user whose every membership is "integrator" gets 403 on
portal pages (their token and session still work on /api/)."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from webportal.accounts.services import uses_portal

# Paths an integrator may still reach: the API, and logging in or out.
OPEN_TO_INTEGRATORS = ("/api/", "/login/", "/logout/")


class IntegratorsUseTheApiMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            isinstance(user, User)
            and user.is_authenticated
            and not request.path.startswith(OPEN_TO_INTEGRATORS)
            and not uses_portal(user=user)
        ):
            raise PermissionDenied("Integrator accounts use the REST API, not the portal.")
        return self.get_response(request)
