"""The portal's Integrations page: a lab admin's API tokens (and webhooks)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webportal.accounts.models import Lab
from webportal.accounts.services import LAB_ADMINS, authenticated_user, labs_where
from webportal.api import tokens
from webportal.api.forms import TokenForm
from webportal.api.models import ApiToken


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


@require_http_methods(["GET", "POST"])
def integrations(request: HttpRequest) -> HttpResponse:
    if not administered_labs(user=authenticated_user(request)).exists():
        return render(request, "api/not_admin.html", status=403)
    lab = _lab(request)
    form = TokenForm(request.POST or None)
    issued = None
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
            form = TokenForm()
    # The new token is in this response only: never in a redirect, a message or a cookie.
    return render(
        request,
        "api/integrations.html",
        {
            "lab": lab,
            "labs": administered_labs(user=authenticated_user(request)),
            "tokens": tokens.tokens_of(lab=lab),
            "form": form,
            "issued": issued,
        },
    )


@require_POST
def revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    labs = administered_labs(user=authenticated_user(request))
    token = get_object_or_404(ApiToken.objects.filter(lab__in=labs), pk=token_id)
    tokens.revoke_token(token=token, actor=authenticated_user(request))
    return redirect(f"/integrations/?lab={token.lab.slug}")
