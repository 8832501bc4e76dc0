"""Agreement between the model and the people who verified its work, per lab and model.

The population is every cell of the lab's batches run with one model version whose report was
signed in the chosen period: signing means a pathologist verified every cell, so a cell nobody
relabelled counts as the model's label kept. The final label is the cell's latest review, else
the model's top class (a signed batch has no unidentified cell left).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from django.db.models import OuterRef, QuerySet, Subquery

from ml.agreement import cohen_kappa
from webportal.accounts.models import Lab
from webportal.cases.models import Batch, Cell, ModelVersion, Prediction
from webportal.cases.selectors import latest_review
from webportal.core.labels import NOT_CLASSED, UNIDENTIFIED
from webportal.reports.models import Report

OTHER_CATEGORY = "other category"

SIGNED_STATUSES = (Report.Status.FINAL, Report.Status.AMENDED)


@dataclass(frozen=True)
class ClassAgreement:
    label: str
    predicted: int  # cells the model gave this class
    kept: int  # ... that kept it
    changed: int  # ... relabelled to another class
    not_classed: int  # ... marked "not a cell / not classed"

    @property
    def kept_percent(self) -> float | None:
        return round(100 * self.kept / self.predicted, 1) if self.predicted else None


@dataclass(frozen=True)
class Agreement:
    model_version: ModelVersion
    batches: int
    cells: int
    reviewed_cells: int  # cells with at least one review
    classes: list[str]
    # matrix[i][j]: cells the model called classes[i] whose final label is columns[j]
    columns: list[str]  # classes, then "not classed"
    matrix: list[list[int]]
    per_class: list[ClassAgreement]
    kept: int
    kappa: float | None  # over cells with a class as final label; None when undefined

    @property
    def kept_percent(self) -> float | None:
        return round(100 * self.kept / self.cells, 1) if self.cells else None


def model_versions_used_by(*, lab: Lab) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(
        pk__in=Batch.objects.filter(case__lab=lab).values("model_version")
    ).order_by("-created_at", "-id")


def signed_batches(
    *,
    lab: Lab,
    model_version: ModelVersion,
    date_from: date | None = None,
    date_to: date | None = None,
) -> QuerySet[Batch]:
    """The lab's batches of that model with a report first signed within the dates."""
    reports = Report.objects.filter(
        batch__case__lab=lab,
        batch__model_version=model_version,
        status__in=SIGNED_STATUSES,
        signed_at__isnull=False,
    )
    if date_from is not None:
        reports = reports.filter(signed_at__date__gte=date_from)
    if date_to is not None:
        reports = reports.filter(signed_at__date__lte=date_to)
    return Batch.objects.filter(pk__in=reports.values("batch_id"))


def agreement(
    *,
    lab: Lab,
    model_version: ModelVersion,
    date_from: date | None = None,
    date_to: date | None = None,
) -> Agreement:
    batches = signed_batches(
        lab=lab, model_version=model_version, date_from=date_from, date_to=date_to
    )
    prediction = Prediction.objects.filter(cell=OuterRef("pk"), model_version=model_version)
    rows = (
        Cell.objects.filter(image__batch__in=batches)
        .annotate(
            predicted=Subquery(prediction.values("label")[:1]),
            reviewed=Subquery(latest_review().values("label")[:1]),
        )
        .filter(predicted__isnull=False)
        .values_list("predicted", "reviewed")
    )
    classes = list(model_version.classes)
    # A category of the lab's vocabulary the model lacks (blast, smudge cell, ...; issue 19):
    # one column, counted as a change of the model's class, outside kappa (square matrix).
    columns = [*classes, OTHER_CATEGORY, NOT_CLASSED]
    index = {label: i for i, label in enumerate(columns)}
    matrix = np.zeros((len(classes), len(columns)), dtype=np.int64)
    reviewed_cells = 0
    for predicted, reviewed in rows:
        if reviewed is not None:
            reviewed_cells += 1
        final = reviewed if reviewed is not None else predicted
        if final not in index and final != UNIDENTIFIED:
            final = OTHER_CATEGORY
        if predicted in index and final in index:
            matrix[index[predicted], index[final]] += 1
    square = matrix[:, : len(classes)]
    kappa = cohen_kappa(square)
    per_class = [
        ClassAgreement(
            label=label,
            predicted=int(matrix[i].sum()),
            kept=int(matrix[i, i]),
            changed=int(square[i].sum() - matrix[i, i] + matrix[i, len(classes)]),
            not_classed=int(matrix[i, -1]),
        )
        for i, label in enumerate(classes)
    ]
    return Agreement(
        model_version=model_version,
        batches=batches.count(),
        cells=int(matrix.sum()),
        reviewed_cells=reviewed_cells,
        classes=classes,
        columns=columns,
        matrix=matrix.tolist(),
        per_class=per_class,
        kept=int(np.trace(square)),
        kappa=None if np.isnan(kappa) else round(kappa, 3),
    )
