"""The review gallery and the cell page: thin views over cases.reviews and the reports.

The gallery's behaviour (selection, keyboard, reclassification without reloading) is in
static/portal/review.js; it posts JSON to `reclassify` and swaps in the differential that
comes back.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ml.locate import crop_cell
from webportal.accounts.services import authenticated_user
from webportal.cases import heatmaps, selectors, services
from webportal.cases.models import Batch, Cell, Prediction
from webportal.cases.selectors import CellState, batch_cells
from webportal.core.labels import NOT_CLASSED, PENDING, UNIDENTIFIED
from webportal.reports.models import Report
from webportal.reports.reviews import review_cells, review_history, review_labels
from webportal.reports.services import latest_report
from webportal.reports.wording import differential_context, threshold_percent, threshold_text

# Keys 1-9 pick the first nine categories of the lab's vocabulary, then the letters a-z the
# next ones (the morphology categories the model lacks); 0 marks "not classed".
KEYS = "123456789abcdefghijklmnopqrstuvwxyz"


def _cells(request: HttpRequest) -> QuerySet[Cell]:
    """The cells the user may see (selectors.cells_visible_to), with what the pages show."""
    return selectors.cells_visible_to(user=authenticated_user(request)).select_related(
        "image__batch__case__lab", "image__batch__model_version"
    )


def _groups(states: list[CellState], classes: list[str]) -> list[dict[str, Any]]:
    """Cells by current label: unidentified first, then classes by count (most first), then
    pending and not classed; every label gets a group (empty ones hidden) so a tile can move."""
    by_label: dict[str, list[CellState]] = {}
    for state in states:
        by_label.setdefault(state.current, []).append(state)
    counts = Counter({label: len(cells) for label, cells in by_label.items()})
    ordered = sorted(classes, key=lambda label: (-counts[label], classes.index(label)))
    labels = [UNIDENTIFIED, *ordered, PENDING, NOT_CLASSED]
    labels += [label for label in by_label if label not in labels]  # classes of an older model
    return [{"label": label, "cells": by_label.get(label, [])} for label in labels]


def _choices(batch: Batch) -> list[dict[str, str]]:
    labels = review_labels(model_version=batch.model_version, lab=batch.case.lab)
    choices = []
    for index, label in enumerate(labels[:-1]):
        key = KEYS[index] if index < len(KEYS) else ""
        choices.append({"label": label, "key": key})
    choices.append({"label": NOT_CLASSED, "key": "0"})
    return choices


SIGNED_HINT = (
    "The report is signed: this change is not in it. Amend the report to issue it "
    "(the amendment is counted from the cells' current classes)."
)


def _differential_context(report: Report | None) -> dict[str, Any]:
    return differential_context(report)


@require_GET
def review(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch = get_object_or_404(
        selectors.batches_visible_to(user=authenticated_user(request)).select_related(
            "case__patient"
        ),
        pk=batch_id,
    )
    states = batch_cells(batch=batch)
    threshold = batch.model_version.threshold
    report = latest_report(batch=batch)
    return render(
        request,
        "cases/review.html",
        {
            "batch": batch,
            "case": batch.case,
            "groups": _groups(states, list(batch.model_version.classes)),
            "cell_count": len(states),
            "choices": _choices(batch),
            "threshold_percent": threshold_percent(threshold),
            "threshold": threshold_text(threshold),
            "unidentified": UNIDENTIFIED,
            **_differential_context(report),
        },
    )


@require_POST
def reclassify(request: HttpRequest, batch_id: int) -> JsonResponse:
    """JSON in: {"cells": [ids], "label": "..."}; JSON out: the cells' new labels and the
    differential as HTML. Errors: {"error": message} with 400 (bad request) or 403 (role)."""
    batch = get_object_or_404(
        selectors.batches_visible_to(user=authenticated_user(request)), pk=batch_id
    )
    try:
        body = json.loads(request.body or b"{}")
        ids = [int(pk) for pk in body["cells"]]
        label = str(body["label"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'Send {"cells": [ids], "label": "..."}.'}, status=400)
    cells = Cell.objects.filter(image__batch=batch, pk__in=ids)
    try:
        reviews = review_cells(actor=authenticated_user(request), cells=cells, label=label)
    except PermissionDenied as exc:
        return JsonResponse({"error": str(exc)}, status=403)
    except services.ServiceError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    report = latest_report(batch=batch)
    return JsonResponse(
        {
            "label": reviews[0].label,
            "cells": [review.cell_id for review in reviews],
            "hint": SIGNED_HINT if report is not None and report.is_signed else "",
            "differential": render_to_string(
                "reports/_live_differential.html", _differential_context(report), request
            ),
        }
    )


@require_http_methods(["GET", "POST"])
def cell_detail(request: HttpRequest, cell_id: int) -> HttpResponse:
    cell = get_object_or_404(_cells(request), pk=cell_id)
    batch = cell.image.batch
    if request.method == "POST":
        try:
            review_cells(
                actor=authenticated_user(request), cells=[cell], label=request.POST.get("label", "")
            )
        except (PermissionDenied, services.ServiceError) as exc:
            messages.error(request, str(exc))
        else:
            report = latest_report(batch=batch)
            signed = report is not None and report.is_signed
            messages.success(request, "Review saved." + (f" {SIGNED_HINT}" if signed else ""))
        return redirect("cases:cell", cell_id=cell.pk)
    state = batch_cells(batch=batch, cell_ids=[cell.pk])[0]
    prediction = Prediction.objects.filter(cell=cell, model_version=batch.model_version).first()
    probabilities = (
        sorted(prediction.probabilities.items(), key=lambda item: -item[1]) if prediction else []
    )
    threshold = batch.model_version.threshold
    return render(
        request,
        "cases/cell_detail.html",
        {
            "cell": cell,
            "state": state,
            "batch": batch,
            "case": batch.case,
            "prediction": prediction,
            "probabilities": [
                {"label": label, "percent": 100 * p, "shown": f"{100 * p:.1f}"}
                for label, p in probabilities
            ],
            "threshold_percent": threshold_percent(threshold),
            "history": review_history(cell=cell),
            "choices": _choices(batch),
            "unidentified": UNIDENTIFIED,
        },
    )


def _png(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
def cell_crop(request: HttpRequest, cell_id: int) -> HttpResponse | FileResponse:
    """The cell's picture for the gallery: the small copy fitted to the model when the whole
    image is the cell, else its crop from the field as the classifier saw it."""
    cell = get_object_or_404(_cells(request), pk=cell_id)
    image = cell.image
    from PIL import Image as PILImage

    if cell.box is None:
        fitted = image.model_input and image.model_input_geometry != services.FIELD_COPY
        stored = image.model_input if fitted else image.file
        if not stored:
            raise Http404("No stored image for this cell.")
        if str(stored.name).lower().endswith(".png"):
            response = FileResponse(stored.open("rb"), content_type="image/png")
            response["Cache-Control"] = "private, max-age=3600"
            return response
        # The fitted copy is kept uncompressed for the worker; the browser gets a PNG.
        with stored.open("rb") as handle, PILImage.open(handle) as picture:
            buffer = io.BytesIO()
            picture.convert("RGB").save(buffer, format="PNG", compress_level=1)
        return _png(buffer.getvalue())
    if not image.file:
        raise Http404("No stored image for this cell.")

    x, y, width, height = (int(v) for v in cell.box)
    with image.file.open("rb") as handle, PILImage.open(handle) as picture:
        # As the classifier saw it: the locator's square around the box (ml.locate.crop_cell).
        crop = crop_cell(picture.convert("RGB"), (x, y, x + width, y + height))
        crop.thumbnail((192, 192))
        buffer = io.BytesIO()
        crop.save(buffer, format="PNG")
    return _png(buffer.getvalue())


@require_GET
def cell_heatmap(request: HttpRequest, cell_id: int) -> HttpResponse:
    """The Grad-CAM PNG of the cell's predicted class when a worker has made it; until then
    202 (the request is passed on to a worker) and the page's script asks again."""
    cell = get_object_or_404(_cells(request), pk=cell_id)
    png = heatmaps.cached_heatmap(cell=cell)
    if png is not None:
        return _png(png)
    if not heatmaps.request_heatmap(cell=cell):
        raise Http404("No heatmap can be made for this cell (no prediction or no image).")
    response = JsonResponse({"status": "computing"}, status=202)
    response["Retry-After"] = "1"
    return response
