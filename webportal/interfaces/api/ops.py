"""Operator endpoints: /healthz (the process answers) and /readyz (it can do its work) for
load balancers and orchestrators, /metrics for Prometheus."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from webportal.ops import monitoring


@login_not_required
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: this process answers requests (nothing else is checked; see /readyz)."""
    return JsonResponse({"status": "ok"})


@login_not_required
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database answers, the broker takes a write, and at least one classifying
    worker showed a heartbeat within WORKER_ALIVE_SECONDS; 503 otherwise, saying which."""
    readiness = monitoring.check_readiness()
    ready = monitoring.is_ready(readiness)
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", **readiness},
        status=200 if ready else 503,
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
