"""Whole fields in the portal: a field with every box drawn and labelled, where a reviewer
adds a white cell the locator missed (by drawing its box) or discards a false one (reviewed as
"not classed", out of the differential)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from webportal.accounts.services import RoleRequired, authenticated_user
from webportal.cases import selectors, services
from webportal.cases.models import Batch, Cell, Image
from webportal.core.labels import NOT_CLASSED
from webportal.reports import reviews


@require_http_methods(["GET", "POST"])
def field_detail(request: HttpRequest, image_id: int) -> HttpResponse:
    user = authenticated_user(request)
    image = get_object_or_404(
        selectors.images_visible_to(user=user).select_related("batch__model_version"),
        pk=image_id,
        kind=Image.Kind.FIELD,
    )
    batch = image.batch
    if request.method == "POST":
        try:
            _change(request, image)
        except (services.ServiceError, RoleRequired, ValueError) as exc:
            messages.error(request, str(exc))
        return redirect(reverse("cases:field_detail", args=[image.pk]))
    ids = list(image.cells.values_list("pk", flat=True))
    states = selectors.batch_cells(batch=batch, cell_ids=ids) if ids else []
    boxes = [
        {
            "cell_id": s.cell_id,
            "x": s.box[0],
            "y": s.box[1],
            "w": s.box[2],
            "h": s.box[3],
            "label": s.current,
            "discarded": s.current == NOT_CLASSED,
            "label_y": max(s.box[1] - 6, 14),
        }
        for s in states
        if s.box is not None
    ]
    return render(
        request,
        "cases/field_detail.html",
        {
            "image": image,
            "batch": batch,
            "case": batch.case,
            "boxes": boxes,
            # The lab's vocabulary (a drawn cell may be a blast), "not classed" left out.
            "labels": reviews.review_labels(model_version=batch.model_version, lab=batch.case.lab)[
                :-1
            ],
            "can_review": batch.status == Batch.Status.DONE,
        },
    )


def _change(request: HttpRequest, image: Image) -> None:
    user = authenticated_user(request)
    action = request.POST.get("action")
    if action == "discard":
        cell = get_object_or_404(Cell, pk=int(request.POST.get("cell", "0")), image=image)
        reviews.review_cells(actor=user, cells=[cell], label=NOT_CLASSED)
        messages.info(request, "The box was discarded: it no longer counts.")
    elif action == "add":
        box = [round(float(request.POST.get(k, ""))) for k in ("x", "y", "w", "h")]
        reviews.add_missed_cell(
            actor=user, image=image, box=box, label=request.POST.get("label", "")
        )
        messages.info(request, "The cell was added and counted.")
    else:
        raise ValueError("Unknown action.")
