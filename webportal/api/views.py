"""REST API for integrators: thin views over the same services as the portal."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from rest_framework import status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webportal.accounts.services import authenticated_user
from webportal.api.serializers import BatchCreateSerializer, BatchSerializer
from webportal.cases import processing, services


class BatchDetail(APIView):
    def get(self, request: Request, batch_id: int) -> Response:
        batch = get_object_or_404(
            services.batches_visible_to(user=authenticated_user(request)), pk=batch_id
        )
        return Response(BatchSerializer(batch).data)


class CaseBatches(APIView):
    parser_classes = [MultiPartParser, FormParser]

    def post(self, request: Request, case_id: int) -> Response:
        case = get_object_or_404(
            services.cases_visible_to(user=authenticated_user(request)), pk=case_id
        )
        serializer = BatchCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            batch = services.submit_batch(
                case=case,
                created_by=authenticated_user(request),
                files=[(f.name or "unnamed", f) for f in serializer.validated_data["files"]],
                priority=serializer.validated_data["priority"],
            )
        except services.ServiceError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        return Response(BatchSerializer(batch).data, status=status.HTTP_201_CREATED)


class BatchCancel(APIView):
    def post(self, request: Request, batch_id: int) -> Response:
        batch = get_object_or_404(
            services.batches_visible_to(user=authenticated_user(request)), pk=batch_id
        )
        if not processing.cancel_batch(batch_id=batch.pk, actor=authenticated_user(request)):
            return Response(
                {"detail": f"Batch {batch.pk} is already {batch.status}; nothing to cancel."},
                status=status.HTTP_409_CONFLICT,
            )
        batch.refresh_from_db()
        return Response(BatchSerializer(batch).data)
