"""The lab admin's adaptation pages (thin: the services and selectors do the work)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webportal.accounts.services import authenticated_user
from webportal.adaptation import selectors, services
from webportal.cases.registry import active_model_for
from webportal.core.errors import ServiceError
from webportal.interfaces.accounts.views import admin_lab


@require_GET
def adaptation(request: HttpRequest, lab_id: int) -> HttpResponse:
    """What an adaptation would use now, the start button, and the lab's adaptations."""
    lab = admin_lab(request, lab_id)
    try:
        base_model = active_model_for(lab=lab)
    except ServiceError as exc:
        plan, problem = None, str(exc)
    else:
        plan = selectors.adaptation_plan(lab=lab, base_model=base_model)
        problem = plan.problem
    return render(
        request,
        "adaptation/adaptation.html",
        {
            "lab": lab,
            "plan": plan,
            "problem": problem,
            "running": selectors.active_job(lab=lab),
            "jobs": selectors.jobs_of(lab=lab)[:20],
            "few_cell": settings.ADAPT_METHOD == "few-cell",
        },
    )


@require_POST
def start(request: HttpRequest, lab_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    try:
        job = services.start_adaptation(admin=authenticated_user(request), lab=lab)
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect("adaptation:adaptation", lab_id=lab.pk)
    messages.success(request, "Adaptation queued: it runs on the adaptation worker.")
    return redirect("adaptation:job", lab_id=lab.pk, adaptation_job_id=job.pk)


@require_GET
def job(request: HttpRequest, lab_id: int, adaptation_job_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    found = get_object_or_404(selectors.jobs_of(lab=lab), pk=adaptation_job_id)
    lab.refresh_from_db(fields=["active_model"])
    return render(
        request,
        "adaptation/job.html",
        {
            "lab": lab,
            "job": found,
            "rows": selectors.figure_rows(found),
            "summary": selectors.summary_rows(found),
            "refused": selectors.why_not_activatable(found),
            "method": selectors.method_text(found),
            "choice": selectors.choice_text(found),
            "auto_accept": selectors.auto_accept_text(found),
            "stale": selectors.stale_reason(found) if selectors.is_stale(found) else "",
            "in_use": found.result_model_id is not None
            and lab.active_model_id == found.result_model_id,
        },
    )


@require_POST
def decide(request: HttpRequest, lab_id: int, adaptation_job_id: int) -> HttpResponse:
    lab = admin_lab(request, lab_id)
    found = get_object_or_404(selectors.jobs_of(lab=lab), pk=adaptation_job_id)
    activate = request.POST.get("decision") == "activate"
    try:
        services.decide(admin=authenticated_user(request), job=found, activate=activate)
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            "The adapted model now classifies the lab's new batches."
            if activate
            else "The adapted model is not used; the lab keeps its model.",
        )
    return redirect("adaptation:job", lab_id=lab.pk, adaptation_job_id=found.pk)
