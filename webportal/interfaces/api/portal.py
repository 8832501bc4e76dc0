"""The portal's Integrations page: a lab admin's API tokens, webhooks and their delivery log."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webportal.accounts.models import Lab
from webportal.accounts.services import LAB_ADMINS, authenticated_user, labs_where
from webportal.api import tokens
from webportal.api.models import (
    ApiToken,
    LisDelivery,
    LisEndpoint,
    WebhookDelivery,
    WebhookEndpoint,
)
from webportal.interfaces.api.forms import LisForm, TokenForm, WebhookForm
from webportal.notifications import lis, webhooks

DELIVERIES_SHOWN = 50


def administered_labs(*, user: User) -> QuerySet[Lab]:
    return labs_where(user=user, allowed=LAB_ADMINS)


def _lab(request: HttpRequest) -> Lab:
    """The lab whose integrations the admin looks at (?lab=SLUG when they run several)."""
    labs = administered_labs(user=authenticated_user(request))
    slug = request.GET.get("lab")
    lab = labs.filter(slug=slug).first() if slug else labs.first()
    if lab is None:
        raise Http404("No lab of yours by that name.")
    return lab


def _page(request: HttpRequest, lab: Lab, **extra: Any) -> HttpResponse:
    # A new token or secret is in this response only: never in a redirect, message or cookie.
    context = {
        "lab": lab,
        "labs": administered_labs(user=authenticated_user(request)),
        "tokens": tokens.tokens_of(lab=lab),
        "endpoints": webhooks.endpoints_of(lab=lab),
        "deliveries": webhooks.deliveries_of(lab=lab)[:DELIVERIES_SHOWN],
        "form": TokenForm(),
        "webhook_form": WebhookForm(),
        "lis_endpoints": lis.endpoints_of(lab=lab),
        "lis_deliveries": lis.deliveries_of(lab=lab)[:DELIVERIES_SHOWN],
        "lis_form": LisForm(),
        **extra,
    }
    return render(request, "api/integrations.html", context)


def _not_admin(request: HttpRequest) -> HttpResponse | None:
    if administered_labs(user=authenticated_user(request)).exists():
        return None
    return render(request, "api/not_admin.html", status=403)


@require_http_methods(["GET", "POST"])
def integrations(request: HttpRequest) -> HttpResponse:
    if refused := _not_admin(request):
        return refused
    lab = _lab(request)
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            issued = tokens.issue_token(
                lab=lab,
                username=form.cleaned_data["username"],
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
                created_by=authenticated_user(request),
            )
        except tokens.TokenError as exc:
            form.add_error("username", str(exc))
        else:
            return _page(request, lab, issued=issued)
    return _page(request, lab, form=form)


@require_POST
def revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    labs = administered_labs(user=authenticated_user(request))
    token = get_object_or_404(ApiToken.objects.filter(lab__in=labs), pk=token_id)
    tokens.revoke_token(token=token, actor=authenticated_user(request))
    return redirect(f"/integrations/?lab={token.lab.slug}")


@require_POST
def register_webhook(request: HttpRequest) -> HttpResponse:
    if refused := _not_admin(request):
        return refused
    lab = _lab(request)
    form = WebhookForm(request.POST)
    if form.is_valid():
        try:
            endpoint = webhooks.register_endpoint(
                lab=lab,
                url=form.cleaned_data["url"],
                events=form.cleaned_data["events"],
                description=form.cleaned_data["description"],
                actor=authenticated_user(request),
            )
        except webhooks.WebhookError as exc:
            form.add_error("url", str(exc))
        else:
            return _page(request, lab, new_endpoint=endpoint)
    return _page(request, lab, webhook_form=form)


@require_POST
def remove_webhook(request: HttpRequest, webhook_id: int) -> HttpResponse:
    labs = administered_labs(user=authenticated_user(request))
    endpoint = get_object_or_404(WebhookEndpoint.objects.filter(lab__in=labs), pk=webhook_id)
    webhooks.remove_endpoint(endpoint=endpoint, actor=authenticated_user(request))
    return redirect(f"/integrations/?lab={endpoint.lab.slug}")


@require_POST
def redeliver(request: HttpRequest, delivery_id: int) -> HttpResponse:
    labs = administered_labs(user=authenticated_user(request))
    delivery = get_object_or_404(
        WebhookDelivery.objects.filter(
            endpoint__lab__in=labs, endpoint__is_active=True
        ).select_related("endpoint__lab"),
        pk=delivery_id,
    )
    webhooks.redeliver(delivery=delivery, actor=authenticated_user(request))
    return redirect(f"/integrations/?lab={delivery.endpoint.lab.slug}#deliveries")


@require_POST
def register_lis(request: HttpRequest) -> HttpResponse:
    if refused := _not_admin(request):
        return refused
    lab = _lab(request)
    form = LisForm(request.POST)
    if form.is_valid():
        try:
            lis.register_endpoint(
                lab=lab,
                host=form.cleaned_data["host"],
                port=form.cleaned_data["port"],
                receiving_application=form.cleaned_data["receiving_application"],
                receiving_facility=form.cleaned_data["receiving_facility"],
                actor=authenticated_user(request),
            )
        except lis.LisError as exc:
            form.add_error("host", str(exc))
        else:
            return redirect(f"/integrations/?lab={lab.slug}#lis")
    return _page(request, lab, lis_form=form)


@require_POST
def remove_lis(request: HttpRequest, lis_endpoint_id: int) -> HttpResponse:
    labs = administered_labs(user=authenticated_user(request))
    endpoint = get_object_or_404(
        LisEndpoint.objects.filter(lab__in=labs, is_active=True), pk=lis_endpoint_id
    )
    lis.remove_endpoint(endpoint=endpoint, actor=authenticated_user(request))
    return redirect(f"/integrations/?lab={endpoint.lab.slug}#lis")


@require_POST
def resend_lis(request: HttpRequest, lis_delivery_id: int) -> HttpResponse:
    labs = administered_labs(user=authenticated_user(request))
    delivery = get_object_or_404(
        LisDelivery.objects.filter(endpoint__lab__in=labs, endpoint__is_active=True).select_related(
            "endpoint__lab", "report"
        ),
        pk=lis_delivery_id,
    )
    lis.resend(delivery=delivery, actor=authenticated_user(request))
    return redirect(f"/integrations/?lab={delivery.endpoint.lab.slug}#lis-deliveries")
