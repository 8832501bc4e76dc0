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
            child=serializers.JSONField(),
            help_text="Per-field messages (lists of strings; nested for list and object "
            "fields) when the input was invalid; empty otherwise.",
        ),
    },
)


# Any operation may answer these (bad query or path, unknown or revoked token, a role that may
# not, another lab's id, an Accept it cannot serve, a wrong body type, throttling): the schema
# says so for every operation, always in the error shape and as JSON.
EVERYWHERE = {
    "400": "Invalid input (body, query or path): see `fields`.",
    "401": "No token, or a revoked or unknown one.",
    "403": "The token or its account may not do this.",
    "404": "Not found, or another lab's; also an invalid page number.",
    "406": "None of the `Accept`ed types can be produced.",
    "415": "Unsupported request content type.",
    "429": "Too many requests for this token; see `Retry-After`.",
}


def error_responses_everywhere(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """Postprocessing hook: the error responses above on every operation, as JSON."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path in result.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            for code, description in EVERYWHERE.items():
                responses.setdefault(code, {"description": description})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = error
    return result


FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


def json_request_bodies(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """Postprocessing hook: request bodies are documented as JSON, except uploads of files.

    The server also parses HTML forms (DRF's form parsers, for the browsable API), but a form
    cannot say `null`, and DRF reads an empty form field as "not given": the JSON body is the
    contract. An operation whose body holds a file keeps multipart/form-data only.
    """
    for path in result.get("paths", {}).values():
        for operation in path.values():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                if "multipart/form-data" in content and _has_file(result, content):
                    for media_type in [*content]:
                        if media_type != "multipart/form-data":
                            del content[media_type]
                else:
                    for media_type in FORMS:
                        content.pop(media_type, None)
    return result


def _has_file(result: dict[str, Any], content: dict[str, Any]) -> bool:
    schema = content["multipart/form-data"].get("schema", {})
    if "$ref" in schema:
        schema = result["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return "binary" in repr(schema)


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
    target_class = "webportal.interfaces.api.authentication.ApiTokenAuthentication"
    name = "integratorToken"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An integrator token (`hv_...`) from `manage.py issue_token` "
            "or the portal's Integrations page.",
        }
