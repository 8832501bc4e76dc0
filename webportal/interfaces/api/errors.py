"""One error shape for every API answer that is not a success.

    {"error": "<code>", "detail": "<a sentence for a person>", "fields": {"<field>": ["..."]}}

`error` is stable for programs to branch on; `fields` is empty unless the input had field errors.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from webportal.cases import services
from webportal.core.errors import ApplicationError


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


def error_body(code: str, detail: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": code, "detail": detail, "fields": fields or {}}


class _ApplicationFailure(exceptions.APIException):
    """An ApplicationError as the API answers it: its own status and code (400, invalid)."""

    def __init__(self, exc: ApplicationError) -> None:
        super().__init__(str(exc), exc.code)
        self.status_code = exc.http_status


def _as_api_exception(exc: Exception) -> exceptions.APIException | None:
    """The one place an error raised by a service or by Django becomes an HTTP answer."""
    if isinstance(exc, exceptions.APIException):
        return exc
    if isinstance(exc, ApplicationError):
        return _ApplicationFailure(exc)
    if isinstance(exc, Http404):
        return exceptions.NotFound("Not found.")
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, TooManyFilesSent):
        return PayloadTooLarge(services.too_many_files_message())
    if isinstance(exc, RequestDataTooBig | TooManyFieldsSent):
        return PayloadTooLarge(str(exc))
    return None


def _flatten(detail: Any) -> Any:
    if isinstance(detail, dict):
        return {key: _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten(item) for item in detail]
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    api_exc = _as_api_exception(exc)
    if api_exc is None:
        return None  # a bug: Django's 500 handler answers (in JSON under /api/)
    headers: dict[str, str] = {}
    if auth_header := getattr(api_exc, "auth_header", None):
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(api_exc, "wait", None)
    if isinstance(api_exc, exceptions.Throttled) and wait is not None:
        headers["Retry-After"] = str(int(wait))
    if isinstance(api_exc, exceptions.ValidationError):
        detail = _flatten(api_exc.detail)
        fields: dict[str, Any] = detail if isinstance(detail, dict) else {}
        general = fields.pop("non_field_errors", None) or (
            detail if isinstance(detail, list) else None
        )
        body = error_body(
            "invalid",
            " ".join(general) if general else "Some fields are invalid; see `fields`.",
            fields,
        )
    else:
        code = api_exc.get_codes()
        body = error_body(code if isinstance(code, str) else api_exc.default_code,
                          str(api_exc.detail))  # fmt: skip
    set_rollback()
    return Response(body, status=api_exc.status_code, headers=headers)


def json_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Unknown paths under /api/ answer in the API's shape, not with the portal's HTML."""
    return JsonResponse(error_body("not_found", "No such API endpoint."), status=404)


def json_server_error(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        error_body("server_error", "The server failed; the error has been logged."), status=500
    )
