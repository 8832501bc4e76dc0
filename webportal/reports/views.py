"""Report pages: the current version, its versions, sign / amend forms and the PDF."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from webportal.accounts.services import authenticated_user, can_sign
from webportal.cases.batch_check import describe
from webportal.cases.services import ServiceError
from webportal.downloads import content_disposition
from webportal.reports import services
from webportal.reports.forms import AmendForm, RemarksForm
from webportal.reports.models import Report
from webportal.reports.pdf import DECISION_SUPPORT, render_report_pdf


def _report(request: HttpRequest, report_id: int) -> Report:
    return get_object_or_404(
        services.reports_visible_to(user=authenticated_user(request)), pk=report_id
    )


@require_GET
def report_detail(request: HttpRequest, report_id: int) -> HttpResponse:
    report = _report(request, report_id)
    return _render(request, report)


def _render(
    request: HttpRequest,
    report: Report,
    *,
    remarks: RemarksForm | None = None,
    amend: AmendForm | None = None,
    status: int = 200,
) -> HttpResponse:
    batch = report.batch
    versions = list(batch.reports.select_related("signed_by").order_by("-version"))
    latest = versions[0]
    initial = {
        "comment": report.comment,
        "morphology": report.morphology,
        "wbc_count": report.wbc_count,
    }
    user = authenticated_user(request)
    return render(
        request,
        "reports/report_detail.html",
        {
            "report": report,
            "batch": batch,
            "case": batch.case,
            "versions": versions,
            "is_latest": report.pk == latest.pk,
            "latest": latest,
            "may_sign": can_sign(user=user, lab=batch.case.lab),
            "remarks_form": remarks or RemarksForm(initial=initial),
            "amend_form": amend or AmendForm(initial=initial),
            "rows": report.differential,
            "flags": report.flags,
            "wbc_cells": report.wbc_cells,
            "show_absolute": report.wbc_count is not None,
            "decision_support": DECISION_SUPPORT,
            "batch_check": describe(batch),
        },
        status=status,
    )


@require_POST
def report_edit(request: HttpRequest, report_id: int) -> HttpResponse:
    """Save the remarks of a preliminary report, or sign it (the "sign" button)."""
    report = _report(request, report_id)
    form = RemarksForm(request.POST)
    if not form.is_valid():
        return _render(request, report, remarks=form, status=400)
    data = form.cleaned_data
    user = authenticated_user(request)
    try:
        if "sign" in request.POST:
            report = services.sign_report(
                actor=user,
                report=report,
                comment=data["comment"],
                morphology=data["morphology"],
                wbc_count=data["wbc_count"],
            )
            messages.success(request, f"Report v{report.version} signed.")
        else:
            services.update_preliminary_report(
                actor=user,
                report=report,
                comment=data["comment"],
                morphology=data["morphology"],
                wbc_count=data["wbc_count"],
            )
            messages.success(request, "Remarks saved.")
    except (PermissionDenied, ServiceError) as exc:
        form.add_error(None, str(exc))
        return _render(request, report, remarks=form, status=400)
    return redirect("reports:report", report_id=report.pk)


@require_POST
def report_amend(request: HttpRequest, report_id: int) -> HttpResponse:
    report = _report(request, report_id)
    form = AmendForm(request.POST)
    if not form.is_valid():
        return _render(request, report, amend=form, status=400)
    data = form.cleaned_data
    try:
        new = services.amend_report(
            actor=authenticated_user(request),
            report=report,
            reason=data["reason"],
            comment=data["comment"],
            morphology=data["morphology"],
            wbc_count=data["wbc_count"],
        )
    except (PermissionDenied, ServiceError) as exc:
        form.add_error(None, str(exc))
        return _render(request, report, amend=form, status=400)
    messages.success(request, f"Amended: version {new.version} is now the report.")
    return redirect("reports:report", report_id=new.pk)


@require_GET
def report_pdf(request: HttpRequest, report_id: int) -> HttpResponse:
    report = _report(request, report_id)
    pdf = render_report_pdf(report=report)
    services.record_report_download(actor=authenticated_user(request), report=report)
    response = HttpResponse(pdf, content_type="application/pdf")
    name = f"{report.batch.case.accession_number}-batch{report.batch_id}-v{report.version}.pdf"
    response["Content-Disposition"] = content_disposition(name)
    response["Cache-Control"] = "private, no-store"
    return response
