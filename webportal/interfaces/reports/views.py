"""Report pages: the current version, its versions, sign / amend forms and the PDF."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webportal.accounts.services import authenticated_user, can_sign
from webportal.cases.batch_check import describe
from webportal.cases.registry import models_for
from webportal.core.errors import ServiceError
from webportal.downloads import content_disposition
from webportal.interfaces.accounts.views import admin_lab
from webportal.interfaces.reports.forms import AmendForm, CategoryForm, PolicyForm, RemarksForm
from webportal.reports import services, wording
from webportal.reports.content import END_OF_REPORT, amendment_of, header_of
from webportal.reports.differential import CATEGORY_GROUPS, NRBC_CORRECTION
from webportal.reports.models import Report
from webportal.reports.pdf import render_report_pdf
from webportal.reports.vocabulary import build_vocabulary


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
    below_minimum_reason: str = "",
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
    policy = services.policy_for(lab=batch.case.lab)
    return render(
        request,
        "reports/report_detail.html",
        {
            **wording.differential_context(report),
            "batch": batch,
            "case": batch.case,
            "versions": versions,
            "is_latest": report.pk == latest.pk,
            "latest": latest,
            "may_sign": can_sign(user=user, lab=batch.case.lab),
            "remarks_form": remarks or RemarksForm(initial=initial),
            "amend_form": amend or AmendForm(initial=initial),
            "policy": policy,
            "below_minimum_count": 0 < report.wbc_cells < policy.min_leukocytes,
            "below_minimum_reason": below_minimum_reason,
            "below_minimum": wording.below_minimum_line(report),
            "critical_messages": wording.critical_messages(report),
            "verification": wording.verification_line(report),
            "threshold": wording.threshold_text(report.model_version.threshold),
            "decision_support": wording.decision_support(report),
            "header": header_of(report),
            "amendment": amendment_of(report),
            "nrbc_correction": NRBC_CORRECTION,
            "end_of_report": END_OF_REPORT,
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
    reason = request.POST.get("below_minimum_reason", "")[:2000]
    try:
        if "sign" in request.POST:
            report = services.sign_report(
                actor=user,
                report=report,
                comment=data["comment"],
                morphology=data["morphology"],
                wbc_count=data["wbc_count"],
                below_minimum_reason=reason,
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
        return _render(request, report, remarks=form, status=400, below_minimum_reason=reason)
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


@require_http_methods(["GET", "POST"])
def lab_vocabulary(request: HttpRequest, lab_id: int) -> HttpResponse:
    """Lab admins: the cell vocabulary (add a category, mark one critical) and the signing
    rules (minimum of leukocytes, every cell verified by a person). Every change audited."""
    lab = admin_lab(request, lab_id)
    user = authenticated_user(request)
    model = lab.active_model or models_for(lab=lab).filter(lab=None).first()
    vocabulary = (
        services.vocabulary_for(lab=lab, model_version=model)
        if model is not None
        else build_vocabulary(classes=[], lab_categories=services.lab_categories(lab=lab))
    )
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "policy":
                rules = PolicyForm(request.POST)
                if not rules.is_valid():
                    raise ServiceError("Give the minimum as a whole number of leukocytes.")
                services.set_policy(actor=user, lab=lab, **rules.cleaned_data)
                messages.success(request, "Signing rules saved.")
            elif action == "add":
                added = CategoryForm(request.POST)
                if not added.is_valid():
                    raise ServiceError("Name the category and choose its group.")
                category = services.add_category(actor=user, lab=lab, **added.cleaned_data)
                messages.success(request, f"Category {category.label!r} added.")
            elif action == "critical":
                label = request.POST.get("label", "")
                known = next((c for c in vocabulary if c.label == label), None)
                if known is None:
                    raise ServiceError(f"{label!r} is not in the vocabulary.")
                critical = request.POST.get("critical") == "1"
                services.set_critical(actor=user, lab=lab, category=known, critical=critical)
                messages.success(
                    request, f"{label} is {'now' if critical else 'no longer'} critical."
                )
        except ServiceError as exc:
            messages.error(request, str(exc))
        return redirect("reports:vocabulary", lab_id=lab.pk)
    policy = services.policy_for(lab=lab)
    return render(
        request,
        "reports/vocabulary.html",
        {
            "lab": lab,
            "model": model,
            "vocabulary": vocabulary,
            "groups": CATEGORY_GROUPS,
            "policy_form": PolicyForm(
                initial={
                    "min_leukocytes": policy.min_leukocytes,
                    "every_cell_verified": policy.every_cell_verified,
                }
            ),
            "category_form": CategoryForm(),
        },
    )
