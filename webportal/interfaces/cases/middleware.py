"""An upload with more files than Django accepts gets the limit in words, not a bare 400."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import TooManyFilesSent
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from webportal.cases import services
from webportal.interfaces.cases import views


class UploadFileCountMiddleware:
    """Django refuses a request with more than DATA_UPLOAD_MAX_NUMBER_FILES files while parsing
    it, and the CSRF check parses it first: this runs just before that check, parses the
    request itself and answers a refusal with the limit, on the upload form when it came from
    one. The answer changes nothing, so it needs no CSRF token. DRF views (CSRF-exempt) parse
    later, and webportal.interfaces.api.errors answers in the API's JSON error shape.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self,
        request: HttpRequest,
        view_func: Callable[..., Any],
        view_args: tuple[Any, ...],
        view_kwargs: dict[str, Any],
    ) -> HttpResponse | None:
        if request.method != "POST" or getattr(view_func, "csrf_exempt", False):
            return None
        if not (request.content_type or "").startswith("multipart/"):
            return None
        try:
            request.FILES  # noqa: B018 - parsing is the point
        except TooManyFilesSent:
            reason = services.too_many_files_message()
            if view_func is views.case_detail and request.user.is_authenticated:
                return views.case_upload_refused(
                    request, case_id=view_kwargs["case_id"], reason=reason
                )
            return HttpResponseBadRequest(reason, content_type="text/plain; charset=utf-8")
        return None
