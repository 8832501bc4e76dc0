"""Report lifecycle: preliminary (recounted as reviews come in) -> final (signed by a
pathologist, frozen) -> amended (a new signed version; the old one is marked superseded).

Every write is in one transaction with its audit event. Roles are checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from webportal.accounts.models import Lab, Role
from webportal.accounts.services import LAB_ADMINS, REVIEWERS, SIGNERS, require_role
from webportal.api import webhooks
from webportal.audit.models import Action
from webportal.audit.services import record_event
from webportal.cases import batch_check
from webportal.cases.models import Batch, Patient
from webportal.cases.selectors import current_counts
from webportal.cases.services import ServiceError
from webportal.reports.content import freeze_header, patient_band
from webportal.reports.differential import (
    DEFAULT_ABSOLUTE_RANGES,
    DEFAULT_REFERENCE_RANGES,
    UNIDENTIFIED,
    Differential,
    Flag,
    build_differential,
)
from webportal.reports.models import ReferenceRange, Report

__all__ = ["UNIDENTIFIED"]


def _editors(*, via_api: bool) -> frozenset[str]:
    """Who may edit a preliminary report's remarks: reviewers; integrators through the API."""
    return REVIEWERS | {Role.INTEGRATOR} if via_api else REVIEWERS


# --- reference ranges -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceIntervals:
    """The intervals a report flags against: % of WBC and absolute (x10^9/L), per class."""

    percent: dict[str, tuple[float, float]]
    absolute: dict[str, tuple[float, float]]


def _fits(reference: ReferenceRange, *, sex: str, age_years: int | None) -> bool:
    if reference.sex and reference.sex != sex:
        return False
    if age_years is None:
        # Age unknown: only a range for every age applies (else the adult default).
        return reference.age_from_years == 0 and reference.age_to_years is None
    return reference.age_from_years <= age_years and (
        reference.age_to_years is None or age_years < reference.age_to_years
    )


def reference_intervals_for(
    *, lab: Lab, sex: str = "", age_years: int | None = None
) -> ReferenceIntervals:
    """The lab's reference intervals for a patient of this sex and age: for each class the
    most specific of the lab's own ranges that fits (the narrowest age band, then one sex
    before any sex), else the adult defaults."""
    percent = dict(DEFAULT_REFERENCE_RANGES)
    absolute = dict(DEFAULT_ABSOLUTE_RANGES)
    best: dict[str, ReferenceRange] = {}

    def rank(reference: ReferenceRange) -> tuple[int, bool]:
        width = (reference.age_to_years or 200) - reference.age_from_years
        return (-width, bool(reference.sex))

    for reference in ReferenceRange.objects.filter(lab=lab):
        if not _fits(reference, sex=sex, age_years=age_years):
            continue
        key = reference.label.lower()
        if key not in best or rank(reference) > rank(best[key]):
            best[key] = reference
    for key, reference in best.items():
        percent[key] = (reference.low_percent, reference.high_percent)
        if reference.low_absolute is not None and reference.high_absolute is not None:
            absolute[key] = (reference.low_absolute, reference.high_absolute)
    return ReferenceIntervals(percent=percent, absolute=absolute)


def reference_ranges_for(*, lab: Lab) -> dict[str, tuple[float, float]]:
    """The lab's reference intervals (% of WBC) for any sex and age: its own where set, else
    the adult defaults."""
    return reference_intervals_for(lab=lab).percent


def set_reference_range(
    *,
    actor: User,
    lab: Lab,
    label: str,
    low_percent: float,
    high_percent: float,
    low_absolute: float | None = None,
    high_absolute: float | None = None,
    sex: str = "",
    age_from_years: int = 0,
    age_to_years: int | None = None,
) -> ReferenceRange:
    """Set one class's reference interval for a lab (lab admins), audited: % of WBC and,
    optionally, absolute (x10^9/L); for any sex and age unless a sex or age band is given."""
    require_role(user=actor, lab=lab, allowed=LAB_ADMINS, action="change reference ranges")
    label = label.strip().lower()
    if not label:
        raise ServiceError("Name the class.")
    if not 0 <= low_percent <= high_percent <= 100:
        raise ServiceError("A reference range needs 0 <= low <= high <= 100 (% of leukocytes).")
    if (low_absolute is None) != (high_absolute is None):
        raise ServiceError("Give both absolute limits (x10^9/L), or neither.")
    if (
        low_absolute is not None
        and high_absolute is not None
        and not 0 <= low_absolute <= high_absolute < 1000
    ):
        raise ServiceError("An absolute range needs 0 <= low <= high (x10^9/L).")
    if sex not in ("", *Patient.Sex.values):
        raise ServiceError(f"Unknown sex {sex!r}: use one of {', '.join(Patient.Sex.values)}.")
    if age_from_years < 0 or (age_to_years is not None and age_to_years <= age_from_years):
        raise ServiceError("An age band needs 0 <= from < to (years; to left empty: no limit).")
    with transaction.atomic():
        existing = ReferenceRange.objects.filter(
            lab=lab, label=label, sex=sex, age_from_years=age_from_years
        ).first()
        reference, _ = ReferenceRange.objects.update_or_create(
            lab=lab,
            label=label,
            sex=sex,
            age_from_years=age_from_years,
            defaults={
                "age_to_years": age_to_years,
                "low_percent": low_percent,
                "high_percent": high_percent,
                "low_absolute": low_absolute,
                "high_absolute": high_absolute,
            },
        )
        record_event(
            lab=lab,
            actor=actor,
            action=Action.REFERENCE_RANGE_CHANGED,
            obj=reference,
            before=_range_values(existing) if existing else None,
            after=_range_values(reference),
        )
    return reference


def _range_values(reference: ReferenceRange) -> dict[str, Any]:
    values: dict[str, Any] = {
        "label": reference.label,
        "low": reference.low_percent,
        "high": reference.high_percent,
    }
    if reference.low_absolute is not None:
        values |= {"low_absolute": reference.low_absolute, "high_absolute": reference.high_absolute}
    if reference.sex:
        values["sex"] = reference.sex
    if reference.age_from_years or reference.age_to_years is not None:
        values["age"] = band_label(reference.age_from_years, reference.age_to_years)
    return values


def band_label(age_from: int, age_to: int | None) -> str:
    """An age band in words: "18 years and over", "1 to 11 years"."""
    if age_to is None:
        return f"{age_from} years and over" if age_from else "all ages"
    return f"{age_from} to {age_to - 1} years" if age_to - 1 > age_from else f"{age_from} years"


# --- the differential -----------------------------------------------------------------------


def compute_differential(*, batch: Batch, wbc_count: Decimal | None = None) -> Differential:
    """The batch's differential from the current labels of its cells (reviews included), with
    the batch guard's flag first when it flagged the batch."""
    case = batch.case
    intervals = reference_intervals_for(lab=case.lab, **patient_band(case))
    differential = build_differential(
        classes=batch.model_version.classes,
        counts=current_counts(batch=batch),
        wbc_count=wbc_count,
        reference_ranges=intervals.percent,
        absolute_ranges=intervals.absolute,
        nrbc_correction_from=case.lab.nrbc_correction_from,
    )
    unlike = batch_check.flag_message(batch)
    if unlike is None:
        return differential
    return replace(differential, flags=[Flag(batch_check.FLAG_CODE, unlike), *differential.flags])


def _fill(report: Report, differential: Differential) -> None:
    report.differential = differential.rows_json()
    report.flags = differential.flags_json()
    report.total_cells = differential.total_cells
    report.wbc_cells = differential.wbc_cells
    report.corrected_wbc_count = differential.corrected_wbc


def _snapshot(report: Report) -> dict[str, Any]:
    """What an audit event keeps of a report."""
    return {
        "version": report.version,
        "status": report.status,
        "counts": {row["label"]: row["count"] for row in report.differential},
        "wbc_count": None if report.wbc_count is None else str(report.wbc_count),
        "comment": report.comment,
        "morphology": report.morphology,
        "flags": [flag["code"] for flag in report.flags],
    }


# --- reading --------------------------------------------------------------------------------


def reports_visible_to(*, user: User) -> QuerySet[Report]:
    return Report.objects.filter(batch__case__lab__memberships__user=user).select_related(
        "batch__case__lab", "batch__case__patient", "model_version", "signed_by"
    )


def latest_report(*, batch: Batch) -> Report | None:
    return batch.reports.order_by("-version").first()


# --- the lifecycle --------------------------------------------------------------------------


def write_preliminary_report(*, batch: Batch) -> Report:
    """The batch's preliminary report (made when its classification finishes), recounted if it
    exists; a signed report is left as it is."""
    with transaction.atomic():
        latest = latest_report(batch=batch)
        if latest is not None:
            if latest.status == Report.Status.PRELIMINARY:
                return refresh_preliminary_report(batch=batch) or latest
            return latest
        report = Report(
            batch=batch,
            version=1,
            status=Report.Status.PRELIMINARY,
            model_version=batch.model_version,
        )
        _fill(report, compute_differential(batch=batch))
        report.save()
        return report


def refresh_preliminary_report(*, batch: Batch) -> Report | None:
    """Recount the preliminary report after reviews; None when there is none to recount."""
    with transaction.atomic():
        report = (
            Report.objects.select_for_update()
            .filter(batch=batch, status=Report.Status.PRELIMINARY)
            .order_by("-version")
            .first()
        )
        if report is None:
            return None
        _fill(report, compute_differential(batch=batch, wbc_count=report.wbc_count))
        report.save(
            update_fields=[
                "differential",
                "flags",
                "total_cells",
                "wbc_cells",
                "corrected_wbc_count",
                "updated_at",
            ]
        )
        return report


def _clean_wbc_count(wbc_count: Decimal | None) -> Decimal | None:
    """The count as stored (two decimals), or a clear refusal."""
    if wbc_count is None:
        return None
    if not Decimal("0") < wbc_count < Decimal("1000"):
        raise ServiceError("The WBC count is in x10^9/L and must be above 0 and under 1000.")
    return wbc_count.quantize(Decimal("0.01"))


def update_preliminary_report(
    *,
    actor: User,
    report: Report,
    comment: str,
    morphology: str,
    wbc_count: Decimal | None,
    via_api: bool = False,
) -> Report:
    """Comment, morphology remarks and WBC count on a report not yet signed."""
    lab = report.batch.case.lab
    require_role(user=actor, lab=lab, allowed=_editors(via_api=via_api), action="edit reports")
    wbc_count = _clean_wbc_count(wbc_count)
    with transaction.atomic():
        report = (
            Report.objects.select_for_update().select_related("batch__case__lab").get(pk=report.pk)
        )
        if report.status != Report.Status.PRELIMINARY:
            raise ServiceError("This report is signed; change it with an amendment.")
        before = _snapshot(report)
        report.comment, report.morphology, report.wbc_count = comment, morphology, wbc_count
        _fill(report, compute_differential(batch=report.batch, wbc_count=wbc_count))
        report.save()
        record_event(
            lab=lab,
            actor=actor,
            action="report.edited",
            obj=report,
            before=before,
            after=_snapshot(report),
        )
    return report


def _refuse_unfinished(differential: Differential, *, doing: str) -> None:
    if differential.unidentified:
        raise ServiceError(
            f"Cannot {doing}: {differential.unidentified} counted "
            f"cell{'s are' if differential.unidentified != 1 else ' is'} still unidentified. "
            "Review them (give each a class or mark it not classed) first."
        )
    if differential.total_cells == 0:
        raise ServiceError(f"Cannot {doing}: no cell is counted.")


def sign_report(
    *,
    actor: User,
    report: Report,
    comment: str | None = None,
    morphology: str | None = None,
    wbc_count: Decimal | None = None,
) -> Report:
    """Sign the preliminary report: pathologists only, never with unidentified cells left.

    The differential is recounted one last time and frozen with the signature. Arguments left
    None keep the report's current values.
    """
    lab = report.batch.case.lab
    require_role(user=actor, lab=lab, allowed=SIGNERS, action="sign reports")
    wbc_count = _clean_wbc_count(wbc_count)
    with transaction.atomic():
        report = (
            Report.objects.select_for_update().select_related("batch__case__lab").get(pk=report.pk)
        )
        if report.status != Report.Status.PRELIMINARY:
            raise ServiceError(
                f"Report v{report.version} is already signed; amend it to change it."
            )
        before = _snapshot(report)
        if comment is not None:
            report.comment = comment
        if morphology is not None:
            report.morphology = morphology
        if wbc_count is not None:
            report.wbc_count = wbc_count
        differential = compute_differential(batch=report.batch, wbc_count=report.wbc_count)
        _refuse_unfinished(differential, doing="sign")
        _fill(report, differential)
        report.status = Report.Status.FINAL
        report.signed_by = actor
        report.signed_at = timezone.now()
        report.header = freeze_header(report)
        report.save()
        record_event(
            lab=lab, actor=actor, action=Action.REPORT_SIGNED, obj=report, before=before,
            after=_snapshot(report),
        )  # fmt: skip
        webhooks.report_changed_on_commit(report_id=report.pk)
    return report


def amend_report(
    *,
    actor: User,
    report: Report,
    reason: str,
    comment: str | None = None,
    morphology: str | None = None,
    wbc_count: Decimal | None = None,
) -> Report:
    """A new signed version of a signed report, recounted from the cells' current labels, with
    the reason; the earlier version stays as it was and is marked superseded by this one.
    Arguments left None carry the earlier version's values over."""
    lab = report.batch.case.lab
    require_role(user=actor, lab=lab, allowed=SIGNERS, action="amend reports")
    reason = reason.strip()
    if not reason:
        raise ServiceError("An amendment needs a reason.")
    wbc_count = _clean_wbc_count(wbc_count)
    with transaction.atomic():
        old = (
            Report.objects.select_for_update().select_related("batch__case__lab").get(pk=report.pk)
        )
        if not old.is_signed:
            raise ServiceError("Only a signed report can be amended; sign this one instead.")
        if old.superseded_by is not None:
            raise ServiceError(
                f"Report v{old.version} is superseded by v{old.superseded_by.version}; "
                "amend the current version."
            )
        new = Report(
            batch=old.batch,
            version=old.version + 1,
            status=Report.Status.AMENDED,
            model_version=old.model_version,
            comment=old.comment if comment is None else comment,
            morphology=old.morphology if morphology is None else morphology,
            wbc_count=old.wbc_count if wbc_count is None else wbc_count,
            amendment_reason=reason,
            signed_by=actor,
            signed_at=timezone.now(),
        )
        differential = compute_differential(batch=old.batch, wbc_count=new.wbc_count)
        _refuse_unfinished(differential, doing="amend")
        _fill(new, differential)
        new.header = freeze_header(new)
        new.save()
        old.superseded_by = new
        old.save(update_fields=["superseded_by", "updated_at"])
        record_event(
            lab=lab,
            actor=actor,
            action=Action.REPORT_AMENDED,
            obj=new,
            before=_snapshot(old),
            after={**_snapshot(new), "reason": reason},
        )
        webhooks.report_changed_on_commit(report_id=new.pk)
    return new


def record_report_download(*, actor: User, report: Report, kind: str = "pdf") -> None:
    """Every export of a report is in the audit trail."""
    with transaction.atomic():
        record_event(
            lab=report.batch.case.lab,
            actor=actor,
            action=Action.REPORT_DOWNLOADED,
            obj=report,
            after={"version": report.version, "status": report.status_label, "format": kind},
        )
