"""The agreement page: how often reviewers kept the model's label, per lab and model."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from webportal.accounts.services import (
    QUALITY_READERS,
    authenticated_user,
    labs_of,
    labs_where,
    require_role,
)
from webportal.interfaces.quality.forms import AgreementForm
from webportal.quality import selectors


@require_GET
def quality_home(request: HttpRequest) -> HttpResponse:
    labs = labs_where(user=authenticated_user(request), allowed=QUALITY_READERS)
    if len(labs) == 1:
        return redirect("quality:agreement", lab_id=labs[0].pk)
    return render(request, "quality/quality_home.html", {"labs": labs})


@require_GET
def agreement(request: HttpRequest, lab_id: int) -> HttpResponse:
    user = authenticated_user(request)
    lab = get_object_or_404(labs_of(user=user), pk=lab_id)
    require_role(user=user, lab=lab, allowed=QUALITY_READERS, action="see the agreement figures")
    model_versions = selectors.model_versions_used_by(lab=lab)
    data = request.GET.copy()
    if "model_version" not in data and model_versions:
        data["model_version"] = str(model_versions[0].pk)
    form = AgreementForm(data, model_versions=model_versions)
    result = None
    if form.is_valid():
        result = selectors.agreement(
            lab=lab,
            model_version=form.cleaned_data["model_version"],
            date_from=form.cleaned_data["date_from"],
            date_to=form.cleaned_data["date_to"],
        )
    matrix_rows = list(zip(result.classes, result.matrix, strict=True)) if result else []
    return render(
        request,
        "quality/agreement.html",
        {"lab": lab, "form": form, "result": result, "matrix_rows": matrix_rows},
    )
