"""A person's own API tokens: made by that person, acting as them (their role in the lab)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webportal.accounts.services import authenticated_user, labs_where
from webportal.api import tokens
from webportal.api.models import ApiToken
from webportal.interfaces.api.forms import PersonalTokenForm


@require_http_methods(["GET", "POST"])
def personal_tokens(request: HttpRequest) -> HttpResponse:
    user = authenticated_user(request)
    labs = labs_where(user=user, allowed=tokens.PERSON_ROLES)
    form = PersonalTokenForm(request.POST or None, labs=labs)
    issued = None
    if request.method == "POST" and form.is_valid():
        try:
            issued = tokens.issue_personal_token(
                user=user,
                lab=form.cleaned_data["lab"],
                name=form.cleaned_data["name"],
                scope=form.cleaned_data["scope"],
            )
        except tokens.TokenError as exc:
            form.add_error(None, str(exc))
        else:
            form = PersonalTokenForm(labs=labs)
    # A new token is in this response only: never in a redirect, message or cookie.
    return render(
        request,
        "api/personal_tokens.html",
        {"form": form, "issued": issued, "tokens": tokens.personal_tokens_of(user=user)},
    )


@require_POST
def revoke_personal_token(request: HttpRequest, token_id: int) -> HttpResponse:
    user = authenticated_user(request)
    token = get_object_or_404(ApiToken.objects.filter(user=user, created_by=user), pk=token_id)
    tokens.revoke_token(token=token, actor=user)
    return redirect("personal_tokens:index")
