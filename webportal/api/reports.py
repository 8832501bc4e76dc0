"""Reports over the API: JSON, FHIR R4 (and PDF), content negotiation, conditional GET.

`/batches/{id}/report/` is the latest version; `/batches/{id}/reports/{version}/` each version.
`Accept: application/json | application/fhir+json` (or `?format=json|fhir`) picks the form;
the explicit `.../fhir/` paths need no header. ETag and Last-Modified on every form: a client
polling with If-None-Match gets 304 until the report changes (signed, amended).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from webportal.api import access
from webportal.api.schema import errors
from webportal.reports import fhir
from webportal.reports.models import Report


class FhirJSONRenderer(JSONRenderer):
    media_type = fhir.CONTENT_TYPE
    format = "fhir"


class ReportSerializer(serializers.ModelSerializer[Report]):
    batch = serializers.IntegerField(source="batch_id", read_only=True)
    case = serializers.IntegerField(source="batch.case_id", read_only=True)
    accession_number = serializers.CharField(source="batch.case.accession_number", read_only=True)
    model_version = serializers.CharField(source="model_version.name", read_only=True)
    signed_by = serializers.CharField(source="signed_by.username", default=None, read_only=True)
    differential = serializers.ListField(child=serializers.DictField(), read_only=True)
    url = serializers.SerializerMethodField()
    fhir_url = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "url",
            "fhir_url",
            "batch",
            "case",
            "accession_number",
            "version",
            "status",
            "model_version",
            "total_cells",
            "differential",
            "comment",
            "signed_by",
            "signed_at",
            "created_at",
        ]
        read_only_fields = fields

    def _reverse(self, name: str, report: Report) -> str:
        return reverse(
            name, args=[report.batch_id, report.version], request=self.context.get("request")
        )

    def get_url(self, report: Report) -> str:
        return self._reverse("api:batch_report_version", report)

    def get_fhir_url(self, report: Report) -> str:
        return self._reverse("api:batch_report_version_fhir", report)


def reports_of(request: Request, batch_id: int) -> QuerySet[Report]:
    batch = get_object_or_404(access.batches(request), pk=batch_id)
    return Report.objects.filter(batch=batch).select_related(
        "batch", "batch__case", "batch__case__lab", "batch__case__patient", "model_version",
        "signed_by",
    )  # fmt: skip


def last_modified(report: Report) -> datetime:
    return max(stamp for stamp in (report.created_at, report.signed_at) if stamp is not None)


def etag(report: Report, representation: str) -> str:
    state = (
        f"{report.pk}:{report.version}:{report.status}:{report.signed_at}:{report.comment}:"
        f"{representation}"
    )
    return '"' + hashlib.sha256(state.encode()).hexdigest()[:32] + '"'


class ReportView(APIView):
    """One report, in the representation the client accepts."""

    renderer_classes: list[type[BaseRenderer]] = [JSONRenderer, FhirJSONRenderer]

    def report(self, request: Request, **kwargs: Any) -> Report:
        raise NotImplementedError

    def get(self, request: Request, **kwargs: Any) -> Response:
        report = self.report(request, **kwargs)
        representation = request.accepted_renderer.format or "json"
        tag = etag(report, representation)
        modified = last_modified(report)
        unchanged = get_conditional_response(
            request._request, etag=tag, last_modified=int(modified.timestamp())
        )
        headers = {"ETag": tag, "Last-Modified": http_date(modified.timestamp())}
        if unchanged is not None:  # 304 Not Modified (or 412 for a failed If-Match)
            return Response(status=unchanged.status_code, headers=headers)
        if representation == "fhir":
            body = fhir.diagnostic_report(report=report)
        else:
            body = ReportSerializer(report, context={"request": request}).data
        return Response(body, headers=headers)

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        # Errors are always JSON in the API's error shape, whatever the client accepted.
        if response.status_code >= 400 and getattr(request, "accepted_renderer", None) is not None:
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = "application/json"
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Vary"] = "Accept, Authorization, Cookie"
        return response


REPORT_RESPONSES: dict[Any, Any] = {
    (200, "application/json"): ReportSerializer,
    (200, fhir.CONTENT_TYPE): OpenApiResponse(
        response=OpenApiTypes.OBJECT, description="A FHIR R4 DiagnosticReport."
    ),
    304: OpenApiResponse(description="Not modified since the ETag / date the client sent."),
    **errors(404, 406),
}


@extend_schema(tags=["reports"], summary="The batch's latest report", responses=REPORT_RESPONSES)
class LatestReport(ReportView):
    def report(self, request: Request, **kwargs: Any) -> Report:
        reports = reports_of(request, kwargs["batch_id"]).order_by("-version")
        report = reports.first()
        if report is None:
            get_object_or_404(reports.none())
        assert report is not None
        return report


@extend_schema(tags=["reports"], summary="One version of the batch's report",
               responses=REPORT_RESPONSES)  # fmt: skip
class ReportVersion(ReportView):
    def report(self, request: Request, **kwargs: Any) -> Report:
        return get_object_or_404(reports_of(request, kwargs["batch_id"]), version=kwargs["version"])


FHIR_RESPONSES: dict[Any, Any] = {
    (200, fhir.CONTENT_TYPE): OpenApiResponse(
        response=OpenApiTypes.OBJECT, description="A FHIR R4 DiagnosticReport."
    ),
    304: OpenApiResponse(description="Not modified."),
    **errors(404),
}


class FhirOnly:
    def get_renderers(self) -> list[BaseRenderer]:
        return [FhirJSONRenderer()]


@extend_schema(tags=["reports"], summary="The latest report as FHIR R4", responses=FHIR_RESPONSES)
class LatestReportFhir(FhirOnly, LatestReport):
    pass


@extend_schema(tags=["reports"], summary="One report version as FHIR R4", responses=FHIR_RESPONSES)
class ReportVersionFhir(FhirOnly, ReportVersion):
    pass


@extend_schema(tags=["reports"], summary="Every version of the batch's report, newest first",
               responses={200: ReportSerializer(many=True), **errors(404)})  # fmt: skip
class ReportVersions(generics.ListAPIView[Report]):
    queryset = Report.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = ReportSerializer

    def get_queryset(self) -> QuerySet[Report]:
        return reports_of(self.request, self.kwargs["batch_id"]).order_by("-version")
