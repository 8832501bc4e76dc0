"""The non-JSON forms the API answers in, and errors that stay JSON whatever was accepted."""

from __future__ import annotations

from typing import Any

from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webportal.reports import fhir, hl7v2


class FhirJSONRenderer(JSONRenderer):
    media_type = fhir.CONTENT_TYPE
    format = "fhir"


class BytesRenderer(BaseRenderer):
    """The view hands over the finished bytes (a PDF, a PNG)."""

    charset = None
    render_style = "binary"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Any = None,
    ) -> Any:
        return data


class PDFRenderer(BytesRenderer):
    media_type = "application/pdf"
    format = "pdf"


class HL7Renderer(BytesRenderer):
    """An HL7 v2 message (ER7 text, segments ended by carriage returns), as UTF-8 bytes."""

    media_type = hl7v2.CONTENT_TYPE
    format = "hl7"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Any = None,
    ) -> Any:
        return data.encode("utf-8") if isinstance(data, str) else data


class PNGRenderer(BytesRenderer):
    media_type = "image/png"
    format = "png"


class JsonErrorsMixin(APIView):
    """An error is JSON in the API's shape even when the client asked for a PDF or FHIR."""

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        if response.status_code >= 400 and getattr(request, "accepted_renderer", None) is not None:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = "application/json"
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Vary"] = "Accept, Authorization, Cookie"
        return response
