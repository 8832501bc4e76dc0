"""Cells over the API: the model's word (label, confidence, probabilities), the people's word
(reviews), the current label, and reviews posted through the same service as the portal's."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from webportal.accounts.services import authenticated_user
from webportal.cases.models import Batch, Cell, Prediction, Review
from webportal.core.errors import ServiceError
from webportal.interfaces.api import access
from webportal.interfaces.api.errors import Conflict
from webportal.interfaces.api.filters import MAX_ID
from webportal.interfaces.api.pagination import MAX_PAGE, Pagination
from webportal.interfaces.api.renderers import JsonErrorsMixin, PNGRenderer
from webportal.interfaces.api.schema import errors
from webportal.interfaces.api.strict import StrictStrings
from webportal.reports import reviews


class ReviewSerializer(serializers.ModelSerializer[Review]):
    reviewer = serializers.CharField(source="reviewer.username", read_only=True)

    class Meta:
        model = Review
        fields = ["id", "label", "reviewer", "reviewer_role", "created_at"]
        read_only_fields = fields


class CellSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    url = serializers.CharField()
    batch = serializers.IntegerField()
    image = serializers.IntegerField(help_text="The image the cell is in.")
    image_url = serializers.CharField(help_text="The image file (PNG), with ETag.")
    original_name = serializers.CharField()
    box = serializers.ListField(
        child=serializers.IntegerField(),
        allow_null=True,
        help_text="(x, y, width, height) in image pixels; null: the whole image is the cell.",
    )
    current_label = serializers.CharField(
        help_text="The latest review, else the prediction; `unidentified` below the model's "
        "threshold or in a batch the batch check flagged (nothing auto-accepted there), "
        "`pending` before classification and while the batch check is pending."
    )
    predicted = serializers.CharField(allow_null=True)
    confidence = serializers.FloatField(allow_null=True)
    probabilities = serializers.DictField(child=serializers.FloatField(), allow_null=True)
    reviews = ReviewSerializer(many=True, help_text="Newest first.")


class ReviewCreateSerializer(StrictStrings, serializers.Serializer[Any]):
    label = serializers.CharField(  # type: ignore[assignment]
        max_length=100,
        help_text="A label of the lab's cell vocabulary (the model's classes, the morphology "
        "categories it lacks, e.g. `blast`, and the lab's own), or `not classed`.",
    )


class BulkReviewSerializer(ReviewCreateSerializer):
    cells = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), min_length=1,
        max_length=5000,
    )  # fmt: skip


def _cells_json(request: Request, batch: Batch, states: list[reviews.CellState]) -> list[Any]:
    ids = [state.cell_id for state in states]
    probabilities = dict(
        Prediction.objects.filter(cell_id__in=ids, model_version=batch.model_version).values_list(
            "cell_id", "probabilities"
        )
    )
    history: dict[int, list[Review]] = defaultdict(list)
    for review in Review.objects.filter(cell_id__in=ids).select_related("reviewer").order_by("-id"):
        history[review.cell_id].append(review)
    return [
        {
            "id": state.cell_id,
            "url": reverse("api:cell_detail", args=[state.cell_id], request=request),
            "batch": batch.pk,
            "image": state.image_id,
            "image_url": reverse("api:cell_image", args=[state.cell_id], request=request),
            "original_name": state.original_name,
            "box": state.box,
            "current_label": state.current,
            "predicted": state.predicted,
            "confidence": state.confidence,
            "probabilities": probabilities.get(state.cell_id),
            "reviews": ReviewSerializer(history[state.cell_id], many=True).data,
        }
        for state in states
    ]


def _cell(request: Request, cell_id: int) -> Cell:
    return get_object_or_404(
        Cell.objects.filter(image__batch__in=access.batches(request)).select_related(
            "image", "image__batch", "image__batch__model_version", "image__batch__case__lab"
        ),
        pk=cell_id,
    )


def _truthy(value: str) -> bool:
    return value.lower() in {"1", "true", "yes"}


CELL_FILTERS = [
    OpenApiParameter("label", OpenApiTypes.STR, description="Current label, e.g. unidentified."),
    OpenApiParameter("predicted", OpenApiTypes.STR, description="The model's label."),
    OpenApiParameter("reviewed", OpenApiTypes.BOOL, description="Has a review (true/false)."),
    OpenApiParameter("max_confidence", OpenApiTypes.FLOAT, description="Confidence at most."),
    OpenApiParameter("min_confidence", OpenApiTypes.FLOAT, description="Confidence at least."),
    OpenApiParameter("page", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
    OpenApiParameter(
        "page_size", {"type": "integer", "minimum": 1, "maximum": Pagination.max_page_size}
    ),
]

# The answer is a page (as every list's), not a bare array.
CellPage = inline_serializer(
    name="PaginatedCellList",
    fields={
        "count": serializers.IntegerField(),
        "next": serializers.URLField(allow_null=True),
        "previous": serializers.URLField(allow_null=True),
        "results": CellSerializer(many=True),
    },
)


class BatchCells(APIView):
    @extend_schema(
        tags=["cells"],
        summary="The batch's cells, paginated, with predictions and reviews",
        parameters=CELL_FILTERS,
        responses={200: CellPage, **errors(400, 404)},
    )
    def get(self, request: Request, batch_id: int) -> Response:
        batch = get_object_or_404(access.batches(request), pk=batch_id)
        states = reviews.batch_cells(batch=batch)
        query = request.query_params
        try:
            low = float(query["min_confidence"]) if "min_confidence" in query else None
            high = float(query["max_confidence"]) if "max_confidence" in query else None
        except ValueError:
            return Response(
                {"error": "invalid", "detail": "Confidences are numbers from 0 to 1.",
                 "fields": {"min_confidence": ["A number."], "max_confidence": ["A number."]}},
                status=status.HTTP_400_BAD_REQUEST,
            )  # fmt: skip
        if label := query.get("label"):
            states = [s for s in states if s.current.lower() == label.strip().lower()]
        if predicted := query.get("predicted"):
            states = [s for s in states if (s.predicted or "").lower() == predicted.lower()]
        if "reviewed" in query:
            wanted = _truthy(query["reviewed"])
            states = [s for s in states if (s.reviewed is not None) == wanted]
        if low is not None:
            states = [s for s in states if s.confidence is not None and s.confidence >= low]
        if high is not None:
            states = [s for s in states if s.confidence is not None and s.confidence <= high]
        paginator = Pagination()
        page = paginator.paginate_queryset(states, request, view=self)
        assert page is not None
        return paginator.get_paginated_response(_cells_json(request, batch, list(page)))


class CellDetail(APIView):
    @extend_schema(
        tags=["cells"],
        summary="One cell with its prediction, probabilities and review history",
        responses={200: CellSerializer, **errors(404)},
    )
    def get(self, request: Request, cell_id: int) -> Response:
        cell = _cell(request, cell_id)
        batch = cell.image.batch
        (state,) = reviews.batch_cells(batch=batch, cell_ids=[cell.pk])
        return Response(_cells_json(request, batch, [state])[0])


def _review(request: Request, batch: Batch, cells: QuerySet[Cell], label: str) -> Response:
    try:
        made = reviews.review_cells(
            actor=authenticated_user(request), cells=cells, label=label, via_api=True
        )
    except ServiceError as exc:
        raise Conflict(str(exc)) from exc
    states = reviews.batch_cells(batch=batch, cell_ids=[review.cell_id for review in made])
    return Response(_cells_json(request, batch, states), status=status.HTTP_201_CREATED)


REVIEW_ERRORS = errors(400, 403, 404, 409)


class CellReviews(APIView):
    @extend_schema(
        tags=["cells"],
        summary="The cell's reviews, newest first",
        responses={200: ReviewSerializer(many=True), **errors(404)},
    )
    def get(self, request: Request, cell_id: int) -> Response:
        cell = _cell(request, cell_id)
        return Response(ReviewSerializer(reviews.review_history(cell=cell), many=True).data)

    @extend_schema(
        tags=["cells"],
        summary="Review the cell: give it a class (or `not classed`); audited like the portal",
        request=ReviewCreateSerializer,
        responses={201: CellSerializer(many=True), **REVIEW_ERRORS},
        description="409 when the batch is not done, the label is not in the lab's vocabulary, "
        "the report is signed (a pathologist amends instead), or a technologist would "
        "overrule a pathologist.",
    )
    def post(self, request: Request, cell_id: int) -> Response:
        cell = _cell(request, cell_id)
        serializer = ReviewCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        cells = Cell.objects.filter(pk=cell.pk)
        return _review(request, cell.image.batch, cells, serializer.validated_data["label"])


class BatchReviews(APIView):
    @extend_schema(
        tags=["cells"],
        summary="Review many cells of the batch at once with one label",
        request=BulkReviewSerializer,
        responses={201: CellSerializer(many=True), **REVIEW_ERRORS},
    )
    def post(self, request: Request, batch_id: int) -> Response:
        batch = get_object_or_404(access.batches(request), pk=batch_id)
        serializer = BulkReviewSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        wanted = set(serializer.validated_data["cells"])
        cells = Cell.objects.filter(image__batch=batch, pk__in=wanted)
        if cells.count() != len(wanted):
            raise Http404("Some of the cells are not in this batch.")
        return _review(request, batch, cells, serializer.validated_data["label"])


class CellImage(JsonErrorsMixin, APIView):
    renderer_classes = [PNGRenderer]  # errors stay JSON (JsonErrorsMixin)

    @extend_schema(
        tags=["cells"],
        summary="The image the cell is in (PNG); ETag and Last-Modified for caching",
        responses={
            (200, "image/png"): OpenApiResponse(response=OpenApiTypes.BINARY),
            304: OpenApiResponse(description="Not modified."),
            **errors(404),
        },
    )
    def get(self, request: Request, cell_id: int) -> Response:
        image = _cell(request, cell_id).image
        if not image.file:
            raise Http404("This file was rejected and not stored.")
        # The stored file never changes: its content hash is a strong validator.
        tag = f'"{image.sha256 or image.pk}"'
        modified = image.created_at.timestamp()
        headers = {"ETag": tag, "Last-Modified": http_date(modified),
                   "Cache-Control": "private, max-age=3600"}  # fmt: skip
        unchanged = get_conditional_response(
            request._request, etag=tag, last_modified=int(modified)
        )
        if unchanged is not None:
            return Response(status=unchanged.status_code, headers=headers)
        with image.file.open("rb") as handle:
            content = handle.read()
        return Response(content, content_type="image/png", headers=headers)
