"""Webhook endpoints and their delivery log over the API (read-write tokens manage them)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from webportal.accounts.services import authenticated_user
from webportal.api.models import WebhookDelivery, WebhookEndpoint
from webportal.interfaces.api import access
from webportal.interfaces.api.schema import errors
from webportal.interfaces.api.strict import StrictStrings
from webportal.notifications import webhooks


class WebhookEndpointSerializer(StrictStrings, serializers.ModelSerializer[WebhookEndpoint]):
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEndpoint.Event.choices),
        required=False,
        help_text="Events to send; empty or absent: all of them.",
    )
    lab = serializers.CharField(source="lab.slug", read_only=True)

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "lab", "url", "description", "events", "is_active", "created_at"]
        read_only_fields = ["id", "lab", "is_active", "created_at"]


class WebhookEndpointCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(
        read_only=True,
        help_text="The signing secret, shown only in this answer: keep it to verify signatures.",
    )

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]
        read_only_fields = [*WebhookEndpointSerializer.Meta.read_only_fields, "secret"]


class WebhookDeliverySerializer(serializers.ModelSerializer[WebhookDelivery]):
    endpoint = serializers.IntegerField(source="endpoint_id", read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "endpoint",
            "event_id",
            "event",
            "status",
            "attempts",
            "last_status_code",
            "last_error",
            "created_at",
            "last_attempt_at",
            "delivered_at",
            "payload",
        ]
        read_only_fields = fields


def endpoints(request: Request) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(lab__in=access.labs(request), is_active=True)


@extend_schema(tags=["webhooks"])
class WebhookList(generics.ListAPIView[WebhookEndpoint]):
    queryset = WebhookEndpoint.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = WebhookEndpointSerializer

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        return endpoints(self.request).select_related("lab").order_by("-created_at", "-id")

    @extend_schema(
        summary="Register an endpoint (its secret is in this answer only)",
        request=WebhookEndpointSerializer,
        responses={201: WebhookEndpointCreatedSerializer, **errors(400, 403)},
    )
    def post(self, request: Request) -> Response:
        serializer = WebhookEndpointSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        labs = access.labs(request)
        lab = labs.first()
        if lab is None or labs.count() != 1:
            return Response(
                {"error": "invalid", "detail": "Register webhooks with a lab's token.",
                 "fields": {}},
                status=status.HTTP_400_BAD_REQUEST,
            )  # fmt: skip
        try:
            endpoint = webhooks.register_endpoint(
                lab=lab,
                url=serializer.validated_data["url"],
                events=serializer.validated_data.get("events", []),
                description=serializer.validated_data.get("description", ""),
                actor=authenticated_user(request),
            )
        except webhooks.WebhookError as exc:
            return Response(
                {"error": "invalid", "detail": str(exc), "fields": {"url": [str(exc)]}},
                status=status.HTTP_400_BAD_REQUEST,
            )
        body = WebhookEndpointCreatedSerializer(endpoint).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["webhooks"])
class WebhookDetail(generics.RetrieveDestroyAPIView[WebhookEndpoint]):
    queryset = WebhookEndpoint.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = WebhookEndpointSerializer
    lookup_url_kwarg = "webhook_id"

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        return endpoints(self.request).select_related("lab")

    @extend_schema(
        summary="Stop sending to this endpoint", responses={204: None, **errors(403, 404)}
    )
    def delete(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        endpoint = self.get_object()
        webhooks.remove_endpoint(endpoint=endpoint, actor=authenticated_user(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["webhooks"], summary="The delivery log of an endpoint, newest first")
class WebhookDeliveries(generics.ListAPIView[WebhookDelivery]):
    queryset = WebhookDelivery.objects.none()  # for the schema; get_queryset scopes it
    serializer_class = WebhookDeliverySerializer

    def get_queryset(self) -> QuerySet[WebhookDelivery]:
        endpoint = get_object_or_404(
            WebhookEndpoint.objects.filter(lab__in=access.labs(self.request)),
            pk=self.kwargs["webhook_id"],
        )
        return endpoint.deliveries.order_by("-created_at", "-id")


@extend_schema(
    tags=["webhooks"],
    summary="Send a logged event again (same event id)",
    request=None,
    responses={202: WebhookDeliverySerializer, **errors(403, 404)},
)
class WebhookRedeliver(APIView):
    def post(self, request: Request, webhook_id: int, delivery_id: int) -> Response:
        delivery = get_object_or_404(
            WebhookDelivery.objects.filter(
                endpoint__lab__in=access.labs(request),
                endpoint_id=webhook_id,
                endpoint__is_active=True,  # a removed endpoint gets nothing more: 404
            ).select_related("endpoint", "endpoint__lab"),
            pk=delivery_id,
        )
        again = webhooks.redeliver(delivery=delivery, actor=authenticated_user(request))
        return Response(WebhookDeliverySerializer(again).data, status=status.HTTP_202_ACCEPTED)
