"""Portal pages for cases and batches: thin, they call services and render."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.datastructures import MultiValueDict
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from webportal.accounts.services import RoleRequired, authenticated_user, labs_of
from webportal.cases import batch_check, selectors, services
from webportal.cases.models import Batch
from webportal.core.labels import UNIDENTIFIED
from webportal.interfaces.cases.forms import BatchUploadForm, CaseForm
from webportal.reports.services import latest_report
from webportal.reports.wording import threshold_percent


@require_http_methods(["GET", "POST"])
def case_list(request: HttpRequest) -> HttpResponse:
    labs = labs_of(user=authenticated_user(request))
    form = CaseForm(request.POST or None, labs=labs)
    if request.method == "POST" and form.is_valid():
        try:
            case = services.create_case(
                lab=form.cleaned_data["lab"],
                created_by=authenticated_user(request),
                accession_number=form.cleaned_data["accession_number"],
                patient=form.patient_details(),
                specimen=form.specimen_details(),
                requester=form.cleaned_data["requester"],
                clinical_note=form.cleaned_data["clinical_note"],
            )
        except (services.ServiceError, RoleRequired) as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("cases:case_detail", case_id=case.pk)
    cases = selectors.cases_visible_to(user=authenticated_user(request))[:200]
    return render(request, "cases/case_list.html", {"cases": cases, "form": form, "labs": labs})


@require_http_methods(["GET", "POST"])
def case_detail(request: HttpRequest, case_id: int) -> HttpResponse:
    case = get_object_or_404(
        selectors.cases_visible_to(user=authenticated_user(request)), pk=case_id
    )
    form = BatchUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            batch = services.submit_batch(
                case=case,
                created_by=authenticated_user(request),
                files=[
                    (upload.name or "unnamed", upload) for upload in form.cleaned_data["images"]
                ],
                priority=form.cleaned_data["priority"],
                hold_if_duplicate=True,
                image_kind=form.cleaned_data["image_kind"],
            )
        except (services.ServiceError, RoleRequired) as exc:
            form.add_error(None, str(exc))
        else:
            if batch.status == Batch.Status.HELD:
                return redirect("cases:batch_detail", batch_id=batch.pk)
            if batch.rejected_files:
                messages.warning(
                    request,
                    f"{batch.rejected_files} file(s) were not accepted; the reasons are listed "
                    "below. The other images are being classified.",
                )
            return redirect("cases:batch_detail", batch_id=batch.pk)
    batches = case.batches.select_related("model_version")
    return render(
        request, "cases/case_detail.html", {"case": case, "batches": batches, "form": form}
    )


@require_GET
def batch_detail(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = get_object_or_404(
        selectors.batches_visible_to(user=authenticated_user(request)), pk=batch_id
    )
    cells = selectors.batch_cells(batch=batch)
    # The page shows the latest report: a signed one is what was recorded, not a recount.
    report = latest_report(batch=batch)
    differential = report.differential if report is not None else []
    max_count = max((row["count"] for row in differential), default=0)
    threshold = batch.model_version.threshold
    return render(
        request,
        "cases/batch_detail.html",
        {
            "batch": batch,
            "case": batch.case,
            "cells": cells,
            "rejected": selectors.rejected_images(batch=batch),
            "empty_fields": selectors.fields_without_white_cells(batch=batch),
            "differential": differential,
            "max_count": max_count,
            "threshold_percent": threshold_percent(threshold),
            "report": report,
            "unidentified": UNIDENTIFIED,
            "pending": selectors.PENDING,
            "batch_check": batch_check.describe(batch),
            "same_images_as": (
                services.earlier_batch_with_same_images(batch=batch)
                if batch.status == Batch.Status.HELD
                else None
            ),
        },
    )


@require_GET
def batch_status(request: HttpRequest, batch_id: int) -> JsonResponse:
    batch = get_object_or_404(
        selectors.batches_visible_to(user=authenticated_user(request)), pk=batch_id
    )
    return JsonResponse(
        {
            "id": batch.pk,
            "status": batch.status,
            "status_display": batch.get_status_display(),
            "total_images": batch.total_images,
            "processed_images": batch.processed_images,
            "progress_percent": batch.progress_percent,
            "finished": batch.is_finished,
            "error": batch.error,
        }
    )


@require_GET
def image_file(request: HttpRequest, image_id: int) -> FileResponse:
    """Images are served only here, after the lab check; there is no public media URL."""
    image = get_object_or_404(
        selectors.images_visible_to(user=authenticated_user(request)), pk=image_id
    )
    if not image.file:
        raise Http404("This file was rejected and not stored.")
    response = FileResponse(image.file.open("rb"), content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_POST
def batch_confirm(request: HttpRequest, batch_id: int) -> HttpResponse:
    """The user's "classify anyway" for a batch held as a repeat of an earlier one."""
    batch = get_object_or_404(
        selectors.batches_visible_to(user=authenticated_user(request)), pk=batch_id
    )
    if services.confirm_batch(batch_id=batch.pk, actor=authenticated_user(request)):
        messages.info(request, "Batch queued: the images are being classified again.")
    else:
        messages.warning(request, f"Batch is already {batch.get_status_display().lower()}.")
    return redirect("cases:batch_detail", batch_id=batch.pk)


@require_http_methods(["GET", "POST"])
def batch_cancel(request: HttpRequest, batch_id: int) -> HttpResponse:
    """Cancel a batch once the user has confirmed it (confirm=yes); otherwise a page that
    asks, saying what cancelling does."""
    batch = get_object_or_404(
        selectors.batches_visible_to(user=authenticated_user(request)), pk=batch_id
    )
    if request.method == "GET" or request.POST.get("confirm") != "yes":
        if batch.is_finished:
            messages.warning(request, f"Batch is already {batch.get_status_display().lower()}.")
            return redirect("cases:batch_detail", batch_id=batch.pk)
        return render(request, "cases/batch_cancel.html", {"batch": batch, "case": batch.case})
    if services.cancel_batch(batch_id=batch.pk, actor=authenticated_user(request)):
        messages.info(request, "Batch cancelled.")
    else:
        messages.warning(request, f"Batch is already {batch.get_status_display().lower()}.")
    return redirect("cases:batch_detail", batch_id=batch.pk)


def case_upload_refused(request: HttpRequest, *, case_id: int, reason: str) -> HttpResponse:
    """The case page again, its upload form saying why the upload was refused (400)."""
    case = get_object_or_404(
        selectors.cases_visible_to(user=authenticated_user(request)), pk=case_id
    )
    form = BatchUploadForm(data={"priority": Batch.Priority.ROUTINE}, files=MultiValueDict())
    form.is_valid()
    form.errors["images"] = form.error_class([reason])
    batches = case.batches.select_related("model_version")
    return render(
        request,
        "cases/case_detail.html",
        {"case": case, "batches": batches, "form": form},
        status=400,
    )
