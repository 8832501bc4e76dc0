"""Reports over the API: JSON, PDF and FHIR R4, content negotiation, conditional GET, and the
lifecycle (edit the preliminary report, sign, amend) through the same services as the portal.

`/batches/{id}/report/` is the latest version; `/batches/{id}/reports/{version}/` each version.
`Accept: application/json | application/pdf | application/fhir+json` (or `?format=json|pdf|fhir`)
picks the form; the explicit `.../pdf/` and `.../fhir/` paths need no header. ETag and
Last-Modified on every form: a client polling with If-None-Match gets 304 until the report
changes (recounted after reviews, signed, amended).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from webportal.accounts.services import authenticated_user
from webportal.api import access
from webportal.api.errors import Conflict
from webportal.api.renderers import FhirJSONRenderer, JsonErrorsMixin, PDFRenderer
from webportal.api.schema import errors
from webportal.api.serializers import (
    BatchCheckSerializer,
    DifferentialRowSerializer,
    FlagSerializer,
)
from webportal.cases.batch_check import describe
from webportal.cases.services import ServiceError
from webportal.downloads import content_disposition
from webportal.reports import fhir, services
from webportal.reports.models import Report
from webportal.reports.pdf import render_report_pdf


class ReportSerializer(serializers.ModelSerializer[Report]):
    batch = serializers.IntegerField(source="batch_id", read_only=True)
    case = serializers.IntegerField(source="batch.case_id", read_only=True)
    accession_number = serializers.CharField(source="batch.case.accession_number", read_only=True)
    patient = serializers.CharField(
        source="batch.case.patient.external_id", default=None, read_only=True, allow_null=True
    )
    model_version = serializers.CharField(source="model_version.name", read_only=True)
    signed_by = serializers.CharField(
        source="signed_by.username", default=None, read_only=True, allow_null=True
    )
    superseded = serializers.BooleanField(source="is_superseded", read_only=True)
    differential = DifferentialRowSerializer(many=True, read_only=True)
    flags = FlagSerializer(many=True, read_only=True)
    url = serializers.SerializerMethodField()
    pdf_url = serializers.SerializerMethodField()
    fhir_url = serializers.SerializerMethodField()
    batch_check = serializers.SerializerMethodField()

    class Meta:
        model = Report
        fields = [
            "id",
            "url",
            "pdf_url",
            "fhir_url",
            "batch",
            "case",
            "accession_number",
            "patient",
            "version",
            "status",
            "superseded",
            "model_version",
            "total_cells",
            "wbc_cells",
            "wbc_count",
            "differential",
            "flags",
            "batch_check",
            "comment",
            "morphology",
            "amendment_reason",
            "signed_by",
            "signed_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def _reverse(self, name: str, report: Report) -> str:
        return reverse(
            name, args=[report.batch_id, report.version], request=self.context.get("request")
        )

    def get_url(self, report: Report) -> str:
        return self._reverse("api:batch_report_version", report)

    def get_pdf_url(self, report: Report) -> str:
        return self._reverse("api:batch_report_version_pdf", report)

    def get_fhir_url(self, report: Report) -> str:
        return self._reverse("api:batch_report_version_fhir", report)

    @extend_schema_field(BatchCheckSerializer(allow_null=True))
    def get_batch_check(self, report: Report) -> dict[str, Any] | None:
        """The batch guard's verdict on the report's batch (decided once, before the first
        version), as on the batch."""
        summary = describe(report.batch)
        return None if summary is None else dict(BatchCheckSerializer(asdict(summary)).data)


class ReportEditSerializer(serializers.Serializer[Any]):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    morphology = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    wbc_count = serializers.DecimalField(
        max_digits=6,
        decimal_places=2,
        required=False,
        allow_null=True,
        help_text="White-cell count from the analyser, x10^9/L: gives absolute counts.",
    )


class AmendSerializer(ReportEditSerializer):
    reason = serializers.CharField(max_length=10_000, help_text="Why the report is amended.")


def reports_of(request: Request, batch_id: int) -> QuerySet[Report]:
    batch = get_object_or_404(access.batches(request), pk=batch_id)
    return Report.objects.filter(batch=batch).select_related(
        "batch", "batch__case", "batch__case__lab", "batch__case__patient", "model_version",
        "signed_by", "superseded_by",
    )  # fmt: skip


def latest_of(request: Request, batch_id: int) -> Report:
    report = reports_of(request, batch_id).order_by("-version").first()
    if report is None:
        get_object_or_404(Report.objects.none())
    assert report is not None
    return report


def last_modified(report: Report) -> datetime:
    return report.updated_at


def etag(report: Report, representation: str) -> str:
    state = f"{report.pk}:{report.version}:{report.updated_at.isoformat()}:{representation}"
    return '"' + hashlib.sha256(state.encode()).hexdigest()[:32] + '"'


class ReportView(JsonErrorsMixin, APIView):
    """One report, in the representation the client accepts."""

    renderer_classes: list[type[BaseRenderer]] = [JSONRenderer, PDFRenderer, FhirJSONRenderer]

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
            services.record_report_download(
                actor=authenticated_user(request), report=report, kind="fhir"
            )
            return Response(fhir.diagnostic_report(report=report), headers=headers)
        if representation == "pdf":
            services.record_report_download(
                actor=authenticated_user(request), report=report, kind="pdf"
            )
            name = f"report-{report.batch.case.accession_number}-v{report.version}.pdf"
            headers["Content-Disposition"] = content_disposition(name, attachment=False)
            return Response(render_report_pdf(report=report), headers=headers)
        body = ReportSerializer(report, context={"request": request}).data
        return Response(body, headers=headers)


FHIR_BODY = OpenApiResponse(response=OpenApiTypes.OBJECT, description="A FHIR R4 DiagnosticReport.")
PDF_BODY = OpenApiResponse(response=OpenApiTypes.BINARY, description="The signed-off PDF layout.")
NOT_MODIFIED = OpenApiResponse(description="Not modified since the ETag / date the client sent.")
REPORT_RESPONSES: dict[Any, Any] = {
    (200, "application/json"): ReportSerializer,
    (200, "application/pdf"): PDF_BODY,
    (200, fhir.CONTENT_TYPE): FHIR_BODY,
    304: NOT_MODIFIED,
    **errors(404, 406),
}


def _edit(request: Request, report: Report) -> Response:
    serializer = ReportEditSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    try:
        edited = services.update_preliminary_report(
            actor=authenticated_user(request),
            report=report,
            comment=data.get("comment", report.comment),
            morphology=data.get("morphology", report.morphology),
            wbc_count=data.get("wbc_count", report.wbc_count),
            via_api=True,
        )
    except ServiceError as exc:
        raise Conflict(str(exc)) from exc
    return Response(ReportSerializer(edited, context={"request": request}).data)


@extend_schema(tags=["reports"])
class LatestReport(ReportView):
    def report(self, request: Request, **kwargs: Any) -> Report:
        return latest_of(request, kwargs["batch_id"])

    @extend_schema(summary="The batch's latest report", responses=REPORT_RESPONSES)
    def get(self, request: Request, **kwargs: Any) -> Response:
        return super().get(request, **kwargs)

    @extend_schema(
        summary="Edit the preliminary report's comment, morphology remarks or WBC count",
        request=ReportEditSerializer,
        responses={200: ReportSerializer, **errors(400, 403, 404, 409)},
    )
    def patch(self, request: Request, batch_id: int) -> Response:
        return _edit(request, latest_of(request, batch_id))


@extend_schema(tags=["reports"], summary="One version of the batch's report",
               responses=REPORT_RESPONSES)  # fmt: skip
class ReportVersion(ReportView):
    def report(self, request: Request, **kwargs: Any) -> Report:
        return get_object_or_404(reports_of(request, kwargs["batch_id"]), version=kwargs["version"])


class FhirOnly:
    def get_renderers(self) -> list[BaseRenderer]:
        return [FhirJSONRenderer()]


class PdfOnly:
    def get_renderers(self) -> list[BaseRenderer]:
        return [PDFRenderer()]


FHIR_RESPONSES: dict[Any, Any] = {
    (200, fhir.CONTENT_TYPE): FHIR_BODY,
    304: NOT_MODIFIED,
    **errors(404),
}
PDF_RESPONSES: dict[Any, Any] = {(200, "application/pdf"): PDF_BODY, 304: NOT_MODIFIED,
                                 **errors(404)}  # fmt: skip


@extend_schema(tags=["reports"], summary="The latest report as FHIR R4", responses=FHIR_RESPONSES)
class LatestReportFhir(FhirOnly, ReportView):
    def report(self, request: Request, **kwargs: Any) -> Report:
        return latest_of(request, kwargs["batch_id"])


@extend_schema(tags=["reports"], summary="One report version as FHIR R4", responses=FHIR_RESPONSES)
class ReportVersionFhir(FhirOnly, ReportVersion):
    pass


@extend_schema(tags=["reports"], summary="The latest report as PDF", responses=PDF_RESPONSES)
class LatestReportPdf(PdfOnly, ReportView):
    def report(self, request: Request, **kwargs: Any) -> Report:
        return latest_of(request, kwargs["batch_id"])


@extend_schema(tags=["reports"], summary="One report version as PDF", responses=PDF_RESPONSES)
class ReportVersionPdf(PdfOnly, ReportVersion):
    pass


@extend_schema(tags=["reports"], summary="Every version of the batch's report, newest first",
               responses={200: ReportSerializer(many=True), **errors(404)})  # fmt: skip
class ReportVersions(generics.ListAPIView[Report]):
    queryset = Report.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = ReportSerializer

    def get_queryset(self) -> QuerySet[Report]:
        return reports_of(self.request, self.kwargs["batch_id"]).order_by("-version")


@extend_schema(
    tags=["reports"],
    summary="Sign the latest (preliminary) report: a pathologist's account only",
    request=ReportEditSerializer,
    responses={200: ReportSerializer, **errors(400, 403, 404, 409)},
    description="403 for an account that may not sign (an integrator); 409 when the report is "
    "signed already or cells are still unidentified.",
)
class SignReport(APIView):
    def post(self, request: Request, batch_id: int) -> Response:
        report = latest_of(request, batch_id)
        serializer = ReportEditSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        try:
            signed = services.sign_report(
                actor=authenticated_user(request),
                report=report,
                comment=data.get("comment"),
                morphology=data.get("morphology"),
                wbc_count=data.get("wbc_count"),
            )
        except ServiceError as exc:
            raise Conflict(str(exc)) from exc
        return Response(ReportSerializer(signed, context={"request": request}).data)


@extend_schema(
    tags=["reports"],
    summary="Amend the latest signed report: a new version, the old one superseded",
    request=AmendSerializer,
    responses={201: ReportSerializer, **errors(400, 403, 404, 409)},
)
class AmendReport(APIView):
    def post(self, request: Request, batch_id: int) -> Response:
        report = latest_of(request, batch_id)
        serializer = AmendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        try:
            amended = services.amend_report(
                actor=authenticated_user(request),
                report=report,
                reason=data["reason"],
                comment=data.get("comment"),
                morphology=data.get("morphology"),
                wbc_count=data.get("wbc_count"),
            )
        except ServiceError as exc:
            raise Conflict(str(exc)) from exc
        body = ReportSerializer(amended, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})
