"""Operator endpoints: /healthz for load balancers, /metrics for Prometheus."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from webportal.cases import monitoring


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    health = monitoring.check_health()
    return JsonResponse(
        {"status": "ok" if all(health.values()) else "unavailable", **health},
        status=200 if all(health.values()) else 503,
    )


@login_not_required
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Counts across all labs: for staff sessions or the METRICS_TOKEN bearer only."""
    token = settings.METRICS_TOKEN
    supplied = request.headers.get("Authorization", "").removeprefix("Bearer ")
    allowed = (bool(token) and hmac.compare_digest(supplied, token)) or (
        request.user.is_authenticated and request.user.is_staff
    )
    if not allowed:
        return HttpResponse("Forbidden: metrics need a staff login or the metrics token.\n",
                            status=403, content_type="text/plain")  # fmt: skip
    body = monitoring.render_prometheus(monitoring.collect_metrics())
    return HttpResponse(body, content_type="text/plain; version=0.0.4")
