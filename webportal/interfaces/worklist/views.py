"""The worklist (a pathologist's home page) and a patient's history. Thin: selectors query."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from webportal.accounts.models import Membership, Role
from webportal.accounts.services import authenticated_user, labs_of
from webportal.interfaces.worklist.forms import WorklistFilterForm
from webportal.worklist import selectors

PAGE_SIZE = 50


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """Pathologists start at the worklist, lab admins at their lab, everyone else at cases."""
    roles = set(
        Membership.objects.filter(user=authenticated_user(request)).values_list("role", flat=True)
    )
    if Role.PATHOLOGIST in roles:
        return redirect("worklist:worklist")
    if roles == {Role.ADMIN}:
        return redirect("accounts:lab_home")
    return redirect("cases:case_list")


@require_GET
def worklist(request: HttpRequest) -> HttpResponse:
    user = authenticated_user(request)
    form = WorklistFilterForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    filters = selectors.WorklistFilters(
        queue=data.get("queue") or selectors.Queue.WAITING,
        priority=data.get("priority", ""),
        date_from=data.get("date_from"),
        date_to=data.get("date_to"),
        accession=data.get("accession", ""),
        patient=data.get("patient", ""),
        search=data.get("search", ""),
    )
    page = Paginator(selectors.worklist(user=user, filters=filters), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    rows = [
        {
            "batch": batch,
            # Annotated by selectors.worklist.
            "unidentified": selectors.unidentified_count(batch.report_differential),  # type: ignore[attr-defined]
        }
        for batch in page
    ]
    # The lab's running and failed batches, beside the chosen list, for staff to follow up.
    queue = (
        list(
            selectors.worklist(
                user=user, filters=selectors.WorklistFilters(queue=selectors.Queue.RUNNING)
            )[:20]
        )
        + list(
            selectors.worklist(
                user=user, filters=selectors.WorklistFilters(queue=selectors.Queue.FAILED)
            ).order_by("-created_at")[:10]
        )
        if filters.queue == selectors.Queue.WAITING
        else []
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "worklist/worklist.html",
        {
            "form": form,
            "filters": filters,
            "page": page,
            "rows": rows,
            "queue": queue,
            "query": query.urlencode(),
            "several_labs": labs_of(user=user).count() > 1,
        },
    )


@require_GET
def patient_detail(request: HttpRequest, patient_id: int) -> HttpResponse:
    patient = get_object_or_404(
        selectors.patients_visible_to(user=authenticated_user(request)), pk=patient_id
    )
    history = selectors.patient_history(patient=patient)
    return render(
        request,
        "worklist/patient_detail.html",
        {
            "patient": patient,
            "history": history,
            "chart": {
                "width": selectors.CHART_WIDTH,
                "height": selectors.CHART_HEIGHT,
                "pad": selectors.CHART_PAD,
            },
        },
    )
