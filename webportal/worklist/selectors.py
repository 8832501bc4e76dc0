"""What a lab has to do next, and what it did for a patient: read-only queries, lab-isolated.

The worklist reads each batch's newest report (its snapshot has the unidentified count), so
one page is one query whatever the number of cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.contrib.auth.models import User
from django.db.models import (
    BooleanField,
    CharField,
    F,
    IntegerField,
    JSONField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models import (
    Case as SqlCase,
)

from webportal.accounts.selectors import visible_to
from webportal.cases.models import Batch, Case, Patient
from webportal.reports.models import Report

UNIDENTIFIED = "unidentified"
NOT_CLASSED = "not classed"
SIGNED_STATUSES = (Report.Status.FINAL, Report.Status.AMENDED)


class Queue:
    """The worklist's status filter: what a batch is waiting for."""

    WAITING = "waiting"  # classified, report not yet signed: review or sign-off
    RUNNING = "running"  # queued or processing
    FAILED = "failed"
    SIGNED = "signed"
    ALL = "all"

    choices = [
        (WAITING, "Waiting for review or sign-off"),
        (RUNNING, "Running"),
        (FAILED, "Failed"),
        (SIGNED, "Signed"),
        (ALL, "All"),
    ]


@dataclass(frozen=True)
class WorklistFilters:
    queue: str = Queue.WAITING
    priority: str = ""
    date_from: date | None = None
    date_to: date | None = None
    accession: str = ""
    patient: str = ""
    search: str = ""


def _latest_report() -> QuerySet[Report]:
    return Report.objects.filter(batch=OuterRef("pk")).order_by("-version")


def worklist(*, user: User, filters: WorklistFilters) -> QuerySet[Batch]:
    """The user's labs' batches for the chosen queue: critical reports first (a category the
    lab marks critical was counted: issue 19), then STAT, then oldest first."""
    batches = (
        visible_to(Batch.objects.all(), user=user, lab_path="case__lab")
        .select_related("case", "case__lab", "case__patient", "model_version")
        .annotate(
            report_status=Subquery(_latest_report().values("status")[:1], output_field=CharField()),
            report_differential=Subquery(
                _latest_report().values("differential")[:1], output_field=JSONField()
            ),
            report_total=Subquery(
                _latest_report().values("total_cells")[:1], output_field=IntegerField()
            ),
            report_critical=Subquery(
                _latest_report().values("critical")[:1], output_field=BooleanField()
            ),
            stat_first=SqlCase(
                When(priority=Batch.Priority.STAT, then=Value(0)),
                default=Value(1),
                output_field=IntegerField(),
            ),
        )
    )
    if filters.queue == Queue.WAITING:
        batches = batches.filter(status=Batch.Status.DONE, report_status=Report.Status.PRELIMINARY)
    elif filters.queue == Queue.RUNNING:
        batches = batches.filter(status__in=[Batch.Status.QUEUED, Batch.Status.PROCESSING])
    elif filters.queue == Queue.FAILED:
        batches = batches.filter(status=Batch.Status.FAILED)
    elif filters.queue == Queue.SIGNED:
        batches = batches.filter(report_status__in=SIGNED_STATUSES)
    if filters.priority:
        batches = batches.filter(priority=filters.priority)
    if filters.date_from is not None:
        batches = batches.filter(created_at__date__gte=filters.date_from)
    if filters.date_to is not None:
        batches = batches.filter(created_at__date__lte=filters.date_to)
    if filters.accession.strip():
        batches = batches.filter(case__accession_number__iexact=filters.accession.strip())
    if filters.patient.strip():
        batches = batches.filter(case__patient__external_id__iexact=filters.patient.strip())
    if filters.search.strip():
        term = filters.search.strip()
        batches = batches.filter(
            Q(case__accession_number__icontains=term)
            | Q(case__patient__external_id__icontains=term)
            | Q(case__clinical_note__icontains=term)
        )
    return batches.order_by(
        F("report_critical").desc(nulls_last=True), "stat_first", "created_at", "id"
    )


def unidentified_count(differential: list[dict[str, Any]] | None) -> int | None:
    """The unidentified cells in a report snapshot; None when the batch has no report yet."""
    if differential is None:
        return None
    return sum(int(row["count"]) for row in differential if row["label"] == UNIDENTIFIED)


# --- patient history ------------------------------------------------------------------------


def patients_visible_to(*, user: User) -> QuerySet[Patient]:
    return visible_to(Patient.objects.all(), user=user).select_related("lab")


@dataclass
class Visit:
    """One batch of a patient with its newest report and its newest signed report."""

    case: Case
    batch: Batch
    report: Report | None
    signed: Report | None

    @property
    def when(self) -> datetime:
        return self.batch.created_at


@dataclass
class TrendRow:
    label: str
    percents: list[float | None]  # one per signed visit, oldest first
    change: float | None  # newest minus the one before
    points: str = ""  # SVG polyline points of the small chart
    dots: list[tuple[float, float, float]] = field(default_factory=list)
    top: float = 0.0

    @property
    def latest(self) -> float | None:
        return self.percents[-1] if self.percents else None

    @property
    def ever_present(self) -> bool:
        return any(percent for percent in self.percents)


@dataclass
class PatientHistory:
    patient: Patient
    cases: list[Case]
    visits: list[Visit]  # every batch, newest first
    signed_visits: list[Visit]  # the signed ones, oldest first: the columns and the x axis
    trends: list[TrendRow]


CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 136, 70, 8


def patient_history(*, patient: Patient) -> PatientHistory:
    cases = list(Case.objects.filter(patient=patient).select_related("lab").order_by("-created_at"))
    batches = list(
        Batch.objects.filter(case__patient=patient)
        .select_related("case", "model_version")
        .prefetch_related("reports", "reports__signed_by")
        .order_by("-created_at", "-id")
    )
    visits: list[Visit] = []
    for batch in batches:
        reports = sorted(batch.reports.all(), key=lambda report: -report.version)
        signed = next(
            (r for r in reports if r.status in SIGNED_STATUSES and r.signed_at is not None),
            None,
        )
        visits.append(
            Visit(
                case=batch.case, batch=batch, report=reports[0] if reports else None, signed=signed
            )
        )
    signed_visits = [visit for visit in reversed(visits) if visit.signed is not None]
    return PatientHistory(
        patient=patient,
        cases=cases,
        visits=visits,
        signed_visits=signed_visits,
        trends=_trends(signed_visits),
    )


def _trends(signed_visits: list[Visit]) -> list[TrendRow]:
    labels: list[str] = []
    for visit in signed_visits:
        assert visit.signed is not None
        for row in visit.signed.differential:
            # Rows shown apart (platelets, unidentified, not classed) have no percentage.
            if row["label"] not in labels and row.get("percent") is not None:
                labels.append(row["label"])
    # Not-classed objects are no white cells: they are outside the differential.
    labels = [label for label in labels if label != NOT_CLASSED]
    # The unidentified row, if any, goes last, as in the reports.
    labels.sort(key=lambda label: label == UNIDENTIFIED)
    rows = []
    for label in labels:
        percents: list[float | None] = []
        for visit in signed_visits:
            assert visit.signed is not None
            found = [row for row in visit.signed.differential if row["label"] == label]
            percent = found[0].get("percent") if found else None
            percents.append(float(percent) if percent is not None else None)
        known = [p for p in percents if p is not None]
        change = (
            round(percents[-1] - percents[-2], 1)
            if len(percents) >= 2 and percents[-1] is not None and percents[-2] is not None
            else None
        )
        row = TrendRow(label=label, percents=percents, change=change)
        _plot(row, known_max=max(known, default=0.0))
        rows.append(row)
    return rows


def _plot(row: TrendRow, *, known_max: float) -> None:
    """Coordinates of one small chart: visits evenly along x, 0 to a rounded top on y."""
    top = max(10.0, float(int(known_max / 10) + 1) * 10) if known_max < 100 else 100.0
    count = len(row.percents)
    step = (CHART_WIDTH - 2 * CHART_PAD) / (count - 1) if count > 1 else 0.0
    points = []
    for index, percent in enumerate(row.percents):
        if percent is None:
            continue
        x = CHART_PAD + index * step if count > 1 else CHART_WIDTH / 2
        y = CHART_HEIGHT - CHART_PAD - (CHART_HEIGHT - 2 * CHART_PAD) * percent / top
        points.append((round(x, 1), round(y, 1), percent))
    row.points = " ".join(f"{x},{y}" for x, y, _ in points)
    row.dots = points
    row.top = top
