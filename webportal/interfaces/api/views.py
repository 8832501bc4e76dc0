"""REST API v1 for integrators: thin views over the same services as the portal."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webportal.accounts.services import authenticated_user
from webportal.api import services as api_services
from webportal.cases import services
from webportal.cases.models import Batch, Case, Patient
from webportal.interfaces.api import access
from webportal.interfaces.api.errors import Conflict, PayloadTooLarge
from webportal.interfaces.api.filters import BatchFilter, CaseFilter, PatientFilter
from webportal.interfaces.api.parsers import DepthLimitedJSONParser
from webportal.interfaces.api.schema import errors
from webportal.interfaces.api.serializers import (
    BatchCreateSerializer,
    BatchSerializer,
    CaseCreateSerializer,
    CaseSerializer,
    PatientDetailSerializer,
    PatientSerializer,
)


def _with_status(cases: QuerySet[Case]) -> QuerySet[Case]:
    latest = Batch.objects.filter(case=OuterRef("pk")).order_by("-created_at", "-id")
    return cases.annotate(
        latest_batch_status=Coalesce(Subquery(latest.values("status")[:1]), Value("new"))
    )


# --- cases ----------------------------------------------------------------------------------


@extend_schema(tags=["cases"])
class CaseList(generics.ListAPIView[Case]):
    queryset = Case.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = CaseSerializer
    filterset_class = CaseFilter
    parser_classes = [DepthLimitedJSONParser, FormParser, MultiPartParser]

    def get_queryset(self) -> QuerySet[Case]:
        return _with_status(access.cases(self.request)).order_by("-created_at", "-id")

    @extend_schema(
        summary="Create a case",
        request=CaseCreateSerializer,
        responses={201: CaseSerializer, **errors(400, 403, 409, 415)},
        examples=[
            OpenApiExample(
                "A case for a patient",
                value={"accession_number": "H24-001234", "patient": "MRN-0042"},
                request_only=True,
            ),
            OpenApiExample(
                "A case with the patient's details, the specimen and the requester",
                value={
                    "accession_number": "H24-001235",
                    "patient": {
                        "identifier": "MRN-0042",
                        "family_name": "Doe",
                        "given_name": "Jane",
                        "birth_date": "1961-04-12",
                        "sex": "female",
                    },
                    "specimen": {
                        "type": "Venous blood, EDTA",
                        "collected_at": "2026-12-07T08:10:00Z",
                        "received_at": "2026-12-07T09:02:00Z",
                    },
                    "requester": "Dr R. Osler, Haematology clinic",
                },
                request_only=True,
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        serializer = CaseCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        labs = access.labs(request)
        if "lab" in data:
            lab = get_object_or_404(labs, slug=data["lab"])
        elif labs.count() == 1:
            lab = labs.get()
        else:
            return Response(
                {"error": "invalid", "detail": "Say which lab: you belong to several.",
                 "fields": {"lab": ["This field is required."]}},
                status=status.HTTP_400_BAD_REQUEST,
            )  # fmt: skip
        if access.cases(request).filter(lab=lab, accession_number=data["accession_number"].strip()):
            raise Conflict(f"Accession number {data['accession_number']} already exists.")
        # A ServiceError answers 400 through the one exception handler (errors.py).
        case = services.create_case(
            lab=lab,
            created_by=authenticated_user(request),
            accession_number=data["accession_number"],
            patient=data.get("patient"),
            specimen=services.SpecimenDetails(**data["specimen"]) if "specimen" in data else None,
            requester=data.get("requester", ""),
            clinical_note=data.get("clinical_note", ""),
        )
        case = _with_status(access.cases(request)).get(pk=case.pk)
        body = CaseSerializer(case, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["cases"], responses={200: CaseSerializer, **errors(404)})
class CaseDetail(generics.RetrieveAPIView[Case]):
    queryset = Case.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = CaseSerializer
    lookup_url_kwarg = "case_id"

    def get_queryset(self) -> QuerySet[Case]:
        return _with_status(access.cases(self.request))


# --- patients -------------------------------------------------------------------------------


@extend_schema(tags=["patients"])
class PatientList(generics.ListAPIView[Patient]):
    queryset = Patient.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = PatientSerializer
    filterset_class = PatientFilter

    def get_queryset(self) -> QuerySet[Patient]:
        return access.patients(self.request).order_by("external_id", "id")


@extend_schema(
    tags=["patients"],
    summary="A patient and their case history",
    responses={200: PatientDetailSerializer, **errors(404)},
)
class PatientDetail(generics.RetrieveAPIView[Patient]):
    queryset = Patient.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = PatientDetailSerializer
    lookup_url_kwarg = "patient_id"

    def get_queryset(self) -> QuerySet[Patient]:
        return access.patients(self.request)

    def get_serializer_context(self) -> dict[str, Any]:
        context = dict(super().get_serializer_context())
        if "patient_id" in self.kwargs:
            context["cases"] = _with_status(
                access.cases(self.request).filter(patient_id=self.kwargs["patient_id"])
            ).order_by("-created_at", "-id")
        return context


# --- batches --------------------------------------------------------------------------------


@extend_schema(tags=["batches"])
class BatchList(generics.ListAPIView[Batch]):
    queryset = Batch.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = BatchSerializer
    filterset_class = BatchFilter

    def get_queryset(self) -> QuerySet[Batch]:
        return access.batches(self.request).order_by("-created_at", "-id")


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="Any unique string (a UUID) per upload. A retry with the same key and the same "
    "files returns the batch made the first time (200) instead of making another; the same key "
    "with different files is refused (409).",
)


@extend_schema(tags=["batches"])
class CaseBatches(generics.ListAPIView[Batch]):
    queryset = Batch.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = BatchSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet[Batch]:
        case = get_object_or_404(access.cases(self.request), pk=self.kwargs["case_id"])
        return access.batches(self.request).filter(case=case).order_by("-created_at", "-id")

    @extend_schema(
        summary="Upload a batch of images (or ZIP archives) into a case",
        parameters=[IDEMPOTENCY_KEY],
        request={"multipart/form-data": BatchCreateSerializer},
        responses={
            201: BatchSerializer,
            200: BatchSerializer,
            **errors(400, 403, 404, 409, 413, 415),
        },
        description="Every file is checked by its content; a bad file is listed in `rejected` "
        "with its reason and the rest of the batch goes on. Poll the batch's `url` or register "
        "a webhook for `batch.done`.",
    )
    def post(self, request: Request, case_id: int) -> Response:
        case = get_object_or_404(access.cases(request), pk=case_id)
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > settings.API_UPLOAD_MAX_BYTES:
            raise PayloadTooLarge(
                f"The upload is {length} bytes; the limit is {settings.API_UPLOAD_MAX_BYTES}."
            )
        serializer = BatchCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key", "").strip()
        if len(key) > 255:
            return Response(
                {"error": "invalid", "detail": "Idempotency-Key is longer than 255 characters.",
                 "fields": {}},
                status=status.HTTP_400_BAD_REQUEST,
            )  # fmt: skip
        try:
            submitted = api_services.submit_batch_once(
                case=case,
                created_by=authenticated_user(request),
                files=serializer.validated_data["files"],
                priority=serializer.validated_data["priority"],
                image_kind=serializer.validated_data["image_kind"],
                idempotency_key=key,
            )
        except api_services.IdempotencyConflict as exc:
            raise Conflict(str(exc)) from exc
        # A ServiceError answers 400 through the one exception handler (errors.py).
        body = BatchSerializer(submitted.batch, context={"request": request}).data
        if submitted.replayed:
            replayed = {"Idempotent-Replayed": "true"}
            return Response(body, status=status.HTTP_200_OK, headers=replayed)
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})


@extend_schema(tags=["batches"], responses={200: BatchSerializer, **errors(404)})
class BatchDetail(generics.RetrieveAPIView[Batch]):
    queryset = Batch.objects.none()  # for the schema; get_queryset scopes to the caller
    serializer_class = BatchSerializer
    lookup_url_kwarg = "batch_id"

    def get_queryset(self) -> QuerySet[Batch]:
        return access.batches(self.request)


@extend_schema(
    tags=["batches"],
    summary="Cancel a queued or running batch",
    request=None,
    responses={200: BatchSerializer, **errors(403, 404, 409)},
)
class BatchCancel(APIView):
    def post(self, request: Request, batch_id: int) -> Response:
        batch = get_object_or_404(access.batches(request), pk=batch_id)
        if not services.cancel_batch(batch_id=batch.pk, actor=authenticated_user(request)):
            raise Conflict(f"Batch {batch.pk} is already {batch.status}; nothing to cancel.")
        batch.refresh_from_db()
        return Response(BatchSerializer(batch, context={"request": request}).data)
