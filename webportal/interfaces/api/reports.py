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
from webportal.cases.batch_check import describe
from webportal.core.errors import ServiceError
from webportal.downloads import content_disposition
from webportal.interfaces.api import access
from webportal.interfaces.api.errors import Conflict
from webportal.interfaces.api.renderers import (
    FhirJSONRenderer,
    HL7Renderer,
    JsonErrorsMixin,
    PDFRenderer,
)
from webportal.interfaces.api.schema import errors
from webportal.interfaces.api.serializers import (
    BatchCheckSerializer,
    DifferentialRowSerializer,
    FlagSerializer,
)
from webportal.interfaces.api.strict import StrictStrings
from webportal.reports import fhir, hl7v2, services, wording
from webportal.reports.content import amendment_of, header_of
from webportal.reports.models import Report
from webportal.reports.pdf import render_report_pdf
from webportal.reports.results import result_document


class VerificationSerializer(serializers.Serializer[Any]):
    person_verified_cells = serializers.IntegerField(
        allow_null=True,
        help_text="Cells whose latest review is a person's (never a machine account's); null "
        "for a version written before this was counted.",
    )
    model_accepted_cells = serializers.IntegerField(
        allow_null=True,
        help_text="Cells the model labelled at or above its threshold with no review.",
    )
    labelled_cells = serializers.IntegerField()
    every_cell_verified_by_a_person = serializers.BooleanField()
    model = serializers.CharField()
    threshold = serializers.FloatField(
        allow_null=True,
        help_text="The model's confidence threshold: below it a cell is unidentified until "
        "reviewed. Above 1 (a model adapted on too few reviewed cells): no cell is "
        "auto-accepted. null: none, no cell is held for its confidence.",
    )
    statement = serializers.CharField()
    decision_support = serializers.CharField()


class ReportHeaderSerializer(serializers.Serializer[Any]):
    """What the report says of its lab, patient, specimen, requester and signer (ISO
    15189:2022 7.4.1.6): frozen at signing, live while preliminary (reports.content)."""

    lab_name = serializers.CharField()
    lab_address = serializers.CharField(allow_blank=True)
    lab_accreditation = serializers.CharField(allow_blank=True)
    lab_director = serializers.CharField(allow_blank=True)
    patient_id = serializers.CharField(allow_blank=True)
    family_name = serializers.CharField(allow_blank=True)
    given_name = serializers.CharField(allow_blank=True)
    birth_date = serializers.DateField(allow_null=True)
    sex = serializers.CharField(allow_blank=True)
    age = serializers.CharField(allow_blank=True, help_text='At collection, e.g. "52 years".')
    specimen_id = serializers.CharField(help_text="The accession number.")
    specimen_type = serializers.CharField(allow_blank=True)
    collected_at = serializers.DateTimeField(allow_null=True)
    received_at = serializers.DateTimeField(allow_null=True)
    requester = serializers.CharField(allow_blank=True)
    signer = serializers.CharField(allow_blank=True, help_text="Full name and title.")
    issued_at = serializers.DateTimeField(allow_null=True)


class ChangeSerializer(serializers.Serializer[Any]):
    what = serializers.CharField(help_text="A class, the WBC count, comment or morphology.")
    before = serializers.CharField()
    after = serializers.CharField()


class AmendmentSerializer(serializers.Serializer[Any]):
    replaced_version = serializers.IntegerField()
    replaced_issued_at = serializers.DateTimeField(allow_null=True)
    replaced_signer = serializers.CharField()
    changes = ChangeSerializer(many=True)


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
    verification = serializers.SerializerMethodField()
    header = serializers.SerializerMethodField()
    amendment = serializers.SerializerMethodField()

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
            "critical",
            "corrected_wbc_count",
            "header",
            "amendment",
            "differential",
            "flags",
            "verification",
            "below_minimum_reason",
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

    @extend_schema_field(VerificationSerializer)
    def get_verification(self, report: Report) -> dict[str, Any]:
        """Who gave the cells their labels: a person, or the model above its threshold."""
        return {
            "person_verified_cells": report.person_verified_cells,
            "model_accepted_cells": report.model_accepted_cells,
            "labelled_cells": report.labelled_cells,
            "every_cell_verified_by_a_person": report.fully_verified,
            "model": report.model_version.name,
            "threshold": report.model_version.threshold,
            "statement": wording.verification_line(report),
            "decision_support": wording.decision_support(report),
        }

    @extend_schema_field(ReportHeaderSerializer)
    def get_header(self, report: Report) -> dict[str, Any]:
        return dict(ReportHeaderSerializer(asdict(header_of(report))).data)

    @extend_schema_field(AmendmentSerializer(allow_null=True))
    def get_amendment(self, report: Report) -> dict[str, Any] | None:
        """What this amendment changed against the version it replaced; null for a first
        version."""
        amendment = amendment_of(report)
        return None if amendment is None else dict(AmendmentSerializer(asdict(amendment)).data)


class ReportEditSerializer(StrictStrings, serializers.Serializer[Any]):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    morphology = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    wbc_count = serializers.DecimalField(
        max_digits=6,
        decimal_places=2,
        required=False,
        allow_null=True,
        help_text="White-cell count from the analyser, x10^9/L: gives absolute counts.",
    )


class SignSerializer(ReportEditSerializer):
    below_minimum_reason = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="Why the report is signed with fewer leukocytes than the lab's minimum "
        "(default 100, CLSI H20-A2); printed on the report. Without it such a signature is "
        "refused (409); with no leukocyte counted it is refused whatever the reason.",
    )


class AmendSerializer(SignSerializer):
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

    renderer_classes: list[type[BaseRenderer]] = [
        JSONRenderer,
        PDFRenderer,
        FhirJSONRenderer,
        HL7Renderer,
    ]

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
            bundle = fhir.report_bundle(report=report, pdf=render_report_pdf(report=report))
            return Response(bundle, headers=headers)
        if representation == "hl7":
            services.record_report_download(
                actor=authenticated_user(request), report=report, kind="hl7"
            )
            message = hl7v2.oru_r01(
                document=result_document(report=report),
                control_id=hl7v2.control_id_of(report=report),
                sent_at=last_modified(report),
            )
            return Response(message, headers=headers)
        if representation == "pdf":
            services.record_report_download(
                actor=authenticated_user(request), report=report, kind="pdf"
            )
            name = f"report-{report.batch.case.accession_number}-v{report.version}.pdf"
            headers["Content-Disposition"] = content_disposition(name, attachment=False)
            return Response(render_report_pdf(report=report), headers=headers)
        body = ReportSerializer(report, context={"request": request}).data
        return Response(body, headers=headers)


FHIR_BODY = OpenApiResponse(
    response=OpenApiTypes.OBJECT,
    description="A FHIR R4 Bundle (type collection): the DiagnosticReport, its Observations, the "
    "Patient, the Specimen and the lab; the PDF as presentedForm.",
)
HL7_BODY = OpenApiResponse(
    response=OpenApiTypes.STR,
    description="An HL7 v2.5.1 ORU^R01 message (ER7; segments end with a carriage return).",
)
PDF_BODY = OpenApiResponse(response=OpenApiTypes.BINARY, description="The signed-off PDF layout.")
NOT_MODIFIED = OpenApiResponse(description="Not modified since the ETag / date the client sent.")
REPORT_RESPONSES: dict[Any, Any] = {
    (200, "application/json"): ReportSerializer,
    (200, "application/pdf"): PDF_BODY,
    (200, fhir.CONTENT_TYPE): FHIR_BODY,
    (200, hl7v2.CONTENT_TYPE): HL7_BODY,
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


class HL7Only:
    def get_renderers(self) -> list[BaseRenderer]:
        return [HL7Renderer()]


FHIR_RESPONSES: dict[Any, Any] = {
    (200, fhir.CONTENT_TYPE): FHIR_BODY,
    304: NOT_MODIFIED,
    **errors(404),
}
HL7_RESPONSES: dict[Any, Any] = {
    (200, hl7v2.CONTENT_TYPE): HL7_BODY,
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


@extend_schema(
    tags=["reports"],
    summary="The latest report as an HL7 v2.5.1 ORU^R01 message",
    responses=HL7_RESPONSES,
)
class LatestReportHL7(HL7Only, ReportView):
    def report(self, request: Request, **kwargs: Any) -> Report:
        return latest_of(request, kwargs["batch_id"])


@extend_schema(
    tags=["reports"],
    summary="One report version as an HL7 v2.5.1 ORU^R01 message",
    responses=HL7_RESPONSES,
)
class ReportVersionHL7(HL7Only, ReportVersion):
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
    request=SignSerializer,
    responses={200: ReportSerializer, **errors(400, 403, 404, 409)},
    description="403 for an account that may not sign (an integrator); 409 when the report is "
    "signed already, cells are still unidentified, no leukocyte was counted, fewer "
    "leukocytes than the lab's minimum were counted and no `below_minimum_reason` is given, "
    "or the lab asks for every cell to be verified by a person and some were not.",
)
class SignReport(APIView):
    def post(self, request: Request, batch_id: int) -> Response:
        report = latest_of(request, batch_id)
        serializer = SignSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        try:
            signed = services.sign_report(
                actor=authenticated_user(request),
                report=report,
                comment=data.get("comment"),
                morphology=data.get("morphology"),
                wbc_count=data.get("wbc_count"),
                below_minimum_reason=data.get("below_minimum_reason"),
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
                below_minimum_reason=data.get("below_minimum_reason"),
            )
        except ServiceError as exc:
            raise Conflict(str(exc)) from exc
        body = ReportSerializer(amended, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})
