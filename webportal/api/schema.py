"""OpenAPI schema hooks (drf-spectacular)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers


def only_v1(endpoints: list[tuple[str, str, str, Any]]) -> list[tuple[str, str, str, Any]]:
    """The schema documents /api/v1/ only; unversioned paths are aliases kept for old clients."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith("/api/v1/")]


ErrorSerializer = inline_serializer(
    name="Error",
    fields={
        "error": serializers.CharField(help_text="A stable code: invalid, not_found, ..."),
        "detail": serializers.CharField(help_text="What went wrong, for a person."),
        "fields": serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()),
            help_text="Per-field messages when the input was invalid; empty otherwise.",
        ),
    },
)


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    meaning = {
        400: "Invalid input: see `fields`.",
        401: "No token, or a revoked or unknown one.",
        403: "The token or its user may not do this (for example a read-only token writing).",
        404: "Not found, or another lab's.",
        406: "None of the `Accept`ed types can be produced.",
        409: "Conflicts with the current state.",
        413: "The upload is too large.",
        415: "Unsupported request content type.",
        429: "Too many requests for this token; see `Retry-After`.",
    }
    return {
        code: OpenApiResponse(response=ErrorSerializer, description=meaning[code])
        for code in (401, 429, *codes)
    }


class ApiTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "webportal.api.authentication.ApiTokenAuthentication"
    name = "integratorToken"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An integrator token (`hv_...`) from `manage.py issue_token` "
            "or the portal's Integrations page.",
        }
