"""The differential: counts and percentages per class, snapshotted into reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from django.db import transaction

from webportal.cases.models import Batch, ModelVersion, Prediction
from webportal.reports.models import Report

UNIDENTIFIED = "unidentified"


@dataclass(frozen=True)
class DifferentialRow:
    label: str
    count: int
    percent: float


def label_for(*, prediction: Prediction, model_version: ModelVersion) -> str:
    """The label a cell counts under: below the model's threshold it waits for a human."""
    if model_version.threshold is not None and prediction.confidence < model_version.threshold:
        return UNIDENTIFIED
    return prediction.label


def compute_differential(*, batch: Batch) -> list[DifferentialRow]:
    model_version = batch.model_version
    predictions = Prediction.objects.filter(
        cell__image__batch=batch, model_version=model_version
    ).only("label", "confidence")
    counts = Counter(
        label_for(prediction=prediction, model_version=model_version) for prediction in predictions
    )
    total = sum(counts.values())
    labels = [*model_version.classes, UNIDENTIFIED]
    return [
        DifferentialRow(
            label=label,
            count=counts.get(label, 0),
            percent=round(100 * counts.get(label, 0) / total, 1) if total else 0.0,
        )
        for label in labels
    ]


def write_preliminary_report(*, batch: Batch) -> Report:
    rows = compute_differential(batch=batch)
    with transaction.atomic():
        latest = batch.reports.order_by("-version").first()
        return Report.objects.create(
            batch=batch,
            version=latest.version + 1 if latest else 1,
            status=Report.Status.PRELIMINARY,
            model_version=batch.model_version,
            differential=[
                {"label": row.label, "count": row.count, "percent": row.percent} for row in rows
            ],
            total_cells=sum(row.count for row in rows),
        )
