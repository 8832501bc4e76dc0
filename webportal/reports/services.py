"""Report lifecycle: preliminary (recounted as reviews come in) -> final (signed by a
pathologist, frozen) -> amended (a new signed version; the old one is marked superseded).

Every write is in one transaction with its audit event. Roles are checked here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from webportal.accounts.models import Lab
from webportal.accounts.selectors import visible_to
from webportal.accounts.services import LAB_ADMINS, REVIEWERS, SIGNERS, require_role, reviewer_roles
from webportal.audit.models import Action
from webportal.audit.services import record_event
from webportal.cases import batch_check
from webportal.cases.models import Batch, ModelVersion, Patient
from webportal.cases.selectors import CellState, batch_cells
from webportal.core.errors import ServiceError
from webportal.core.labels import PENDING
from webportal.reports import signals
from webportal.reports.content import freeze_header, patient_band
from webportal.reports.differential import (
    CATEGORY_GROUPS,
    DEFAULT_ABSOLUTE_RANGES,
    DEFAULT_REFERENCE_RANGES,
    MIN_RELIABLE_WBC,
    NOT_CLASSED,
    UNIDENTIFIED,
    Category,
    Differential,
    Flag,
    build_differential,
)
from webportal.reports.models import CellCategory, ReferenceRange, Report, ReportPolicy
from webportal.reports.vocabulary import build_vocabulary, class_key

__all__ = ["UNIDENTIFIED"]


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


# --- the lab's vocabulary and signing policy ------------------------------------------------

CATEGORY_ADDED = "cell_category.added"  # audit actions
CATEGORY_CHANGED = "cell_category.changed"
POLICY_CHANGED = "report_policy.changed"


def lab_categories(*, lab: Lab) -> list[Category]:
    """The categories a lab admin added, and the lab's critical marks (CellCategory rows)."""
    return [
        Category(row.label, row.group, loinc=row.loinc, critical=row.critical)
        for row in CellCategory.objects.filter(lab=lab).order_by("id")
    ]


def vocabulary_for(*, lab: Lab, model_version: ModelVersion) -> list[Category]:
    """What a reviewer of this lab may call a cell of a batch classified by `model_version`."""
    return build_vocabulary(classes=model_version.classes, lab_categories=lab_categories(lab=lab))


def policy_for(*, lab: Lab) -> ReportPolicy:
    """The lab's signing rules; the defaults (100 leukocytes, no full verification) when it
    has set none."""
    return ReportPolicy.objects.filter(lab=lab).first() or ReportPolicy(
        lab=lab, min_leukocytes=MIN_RELIABLE_WBC
    )


def add_category(
    *, actor: User, lab: Lab, label: str, group: str, loinc: str = "", critical: bool = False
) -> CellCategory:
    """A category of the lab's own (lab admins), audited; a label the vocabulary has already
    is refused (mark it critical instead)."""
    require_role(user=actor, lab=lab, allowed=LAB_ADMINS, action="change the cell vocabulary")
    label = " ".join(label.split()).lower()
    loinc = loinc.strip()
    if not label or len(label) > 100:
        raise ServiceError("Name the category (at most 100 characters).")
    if class_key(label) in {class_key(UNIDENTIFIED), class_key(NOT_CLASSED), "pending"}:
        raise ServiceError(f"{label!r} is a word the system keeps for itself.")
    if group not in CATEGORY_GROUPS:
        raise ServiceError(f"Choose the group: one of {', '.join(CATEGORY_GROUPS)}.")
    if loinc and not (loinc.replace("-", "").isdigit() and loinc.count("-") == 1):
        raise ServiceError("A LOINC code reads like 26446-5.")
    with transaction.atomic():
        model = lab.active_model or ModelVersion.objects.filter(lab=None).order_by("-id").first()
        known = build_vocabulary(
            classes=model.classes if model else [], lab_categories=lab_categories(lab=lab)
        )
        if any(class_key(c.label) == class_key(label) for c in known):
            raise ServiceError(f"The vocabulary has {label!r} already.")
        category = CellCategory.objects.create(
            lab=lab, label=label, group=group, loinc=loinc, critical=critical
        )
        record_event(
            lab=lab, actor=actor, action=CATEGORY_ADDED, obj=category,
            after={"label": label, "group": group, "loinc": loinc, "critical": critical},
        )  # fmt: skip
    return category


def set_critical(*, actor: User, lab: Lab, category: Category, critical: bool) -> None:
    """Mark a category of the lab's vocabulary critical, or not (lab admins), audited."""
    require_role(user=actor, lab=lab, allowed=LAB_ADMINS, action="change the cell vocabulary")
    with transaction.atomic():
        row = (
            CellCategory.objects.select_for_update()
            .filter(lab=lab, label__iexact=category.label)
            .first()
        )
        before = category.critical
        if row is None:
            row = CellCategory.objects.create(
                lab=lab, label=category.label, group=category.group, loinc=category.loinc,
                critical=critical,
            )  # fmt: skip
        else:
            row.critical = critical
            row.save(update_fields=["critical", "updated_at"])
        record_event(
            lab=lab, actor=actor, action=CATEGORY_CHANGED, obj=row,
            before={"label": row.label, "critical": before},
            after={"label": row.label, "critical": critical},
        )  # fmt: skip


def set_policy(
    *, actor: User, lab: Lab, min_leukocytes: int, every_cell_verified: bool
) -> ReportPolicy:
    """The lab's minimum of leukocytes to sign and its full-verification rule, audited."""
    require_role(user=actor, lab=lab, allowed=LAB_ADMINS, action="change the signing rules")
    if not 1 <= min_leukocytes <= 10_000:
        raise ServiceError("The minimum is a number of leukocytes from 1 to 10000.")
    with transaction.atomic():
        old = policy_for(lab=lab)
        before = {"min_leukocytes": old.min_leukocytes,
                  "every_cell_verified": old.every_cell_verified}  # fmt: skip
        policy, _ = ReportPolicy.objects.update_or_create(
            lab=lab,
            defaults={"min_leukocytes": min_leukocytes, "every_cell_verified": every_cell_verified},
        )
        record_event(
            lab=lab, actor=actor, action=POLICY_CHANGED, obj=policy, before=before,
            after={"min_leukocytes": min_leukocytes, "every_cell_verified": every_cell_verified},
        )  # fmt: skip
    return policy


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


@dataclass(frozen=True)
class Counted:
    """A batch's differential and who decided its cells' labels."""

    differential: Differential
    # Cells whose latest review is a person's (staff or pathologist: REVIEWERS); cells the
    # model labelled above its threshold with nobody's review; cells with a label at all.
    person_verified: int
    model_accepted: int
    labelled: int


def _verification(states: list[CellState]) -> tuple[int, int, int]:
    person = model = labelled = 0
    for state in states:
        if state.current in {UNIDENTIFIED, PENDING}:
            continue
        labelled += 1
        if state.reviewed is not None:
            # Only a person's review verifies: an integrator (machine) account's does not.
            person += state.reviewer_role in REVIEWERS
        elif state.current == state.predicted:
            model += 1
    return person, model, labelled


def count_batch(*, batch: Batch, wbc_count: Decimal | None = None) -> Counted:
    """The batch's differential from the current labels of its cells (reviews included), by
    the lab's vocabulary and minimum, with the batch guard's flag first when it flagged the
    batch; and how many labels a person gave."""
    case = batch.case
    lab = case.lab
    intervals = reference_intervals_for(lab=lab, **patient_band(case))
    states = batch_cells(batch=batch)
    counts = Counter(state.current for state in states)
    counts.pop(PENDING, None)
    differential = build_differential(
        categories=vocabulary_for(lab=lab, model_version=batch.model_version),
        counts=counts,
        wbc_count=wbc_count,
        reference_ranges=intervals.percent,
        absolute_ranges=intervals.absolute,
        nrbc_correction_from=lab.nrbc_correction_from,
        min_reliable_wbc=policy_for(lab=lab).min_leukocytes,
    )
    unlike = batch_check.flag_message(batch)
    if unlike is not None:
        flags = [Flag(batch_check.FLAG_CODE, unlike), *differential.flags]
        differential = replace(differential, flags=flags)
    person, model, labelled = _verification(states)
    return Counted(differential, person, model, labelled)


def _fill(report: Report, counted: Counted) -> None:
    differential = counted.differential
    report.differential = differential.rows_json()
    report.flags = differential.flags_json()
    report.total_cells = differential.total_cells
    report.wbc_cells = differential.wbc_cells
    report.critical = differential.critical
    report.person_verified_cells = counted.person_verified
    report.model_accepted_cells = counted.model_accepted
    report.corrected_wbc_count = differential.corrected_wbc


FILLED = ["differential", "flags", "total_cells", "wbc_cells", "critical",
          "person_verified_cells", "model_accepted_cells", "corrected_wbc_count"]  # fmt: skip


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
        "critical": report.critical,
        "below_minimum_reason": report.below_minimum_reason,
    }


# --- reading --------------------------------------------------------------------------------


def reports_visible_to(*, user: User) -> QuerySet[Report]:
    return visible_to(Report.objects.all(), user=user, lab_path="batch__case__lab").select_related(
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
        _fill(report, count_batch(batch=batch))
        report.save()
        if report.critical:
            signals.report_critical.send(sender=Report, report=report)
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
        was_critical = report.critical
        _fill(report, count_batch(batch=batch, wbc_count=report.wbc_count))
        report.save(update_fields=[*FILLED, "updated_at"])
        if report.critical and not was_critical:
            signals.report_critical.send(sender=Report, report=report)
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
    require_role(
        user=actor, lab=lab, allowed=reviewer_roles(via_api=via_api), action="edit reports"
    )
    wbc_count = _clean_wbc_count(wbc_count)
    with transaction.atomic():
        report = (
            Report.objects.select_for_update().select_related("batch__case__lab").get(pk=report.pk)
        )
        if report.status != Report.Status.PRELIMINARY:
            raise ServiceError("This report is signed; change it with an amendment.")
        before = _snapshot(report)
        report.comment, report.morphology, report.wbc_count = comment, morphology, wbc_count
        was_critical = report.critical
        _fill(report, count_batch(batch=report.batch, wbc_count=wbc_count))
        report.save()
        if report.critical and not was_critical:
            signals.report_critical.send(sender=Report, report=report)
        record_event(
            lab=lab,
            actor=actor,
            action="report.edited",
            obj=report,
            before=before,
            after=_snapshot(report),
        )
    return report


def _refuse_unfinished(
    counted: Counted, *, doing: str, policy: ReportPolicy, below_minimum_reason: str
) -> None:
    """The rules of signing (and amending): no unidentified cell, at least one leukocyte, a
    stated reason under the lab's minimum (CLSI H20-A2), every cell verified by a person when
    the lab asks for it (ICSH)."""
    differential = counted.differential
    if differential.unidentified:
        raise ServiceError(
            f"Cannot {doing}: {differential.unidentified} counted "
            f"cell{'s are' if differential.unidentified != 1 else ' is'} still unidentified. "
            "Review them (give each a class or mark it not classed) first."
        )
    if differential.wbc_cells == 0:
        raise ServiceError(
            f"Cannot {doing}: no leukocyte is counted, so there is no differential to report."
        )
    if differential.wbc_cells < policy.min_leukocytes and not below_minimum_reason:
        raise ServiceError(
            f"Cannot {doing}: {differential.wbc_cells} leukocytes counted, under the lab's "
            f"minimum of {policy.min_leukocytes}. Count more cells, or state why this count "
            "must do (the reason is printed on the report)."
        )
    if policy.every_cell_verified and counted.person_verified < counted.labelled:
        left = counted.labelled - counted.person_verified
        raise ServiceError(
            f"Cannot {doing}: the lab asks for every cell to be verified by a person, and "
            f"{left} cell{'s were' if left != 1 else ' was'} not (accepted by the model "
            "without review). Review them first."
        )


def sign_report(
    *,
    actor: User,
    report: Report,
    comment: str | None = None,
    morphology: str | None = None,
    wbc_count: Decimal | None = None,
    below_minimum_reason: str | None = None,
) -> Report:
    """Sign the preliminary report: pathologists only, never with unidentified cells left, never
    with no leukocyte, under the lab's minimum only with `below_minimum_reason`.

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
        counted = count_batch(batch=report.batch, wbc_count=report.wbc_count)
        reason = (below_minimum_reason or "").strip()
        policy = policy_for(lab=lab)
        _refuse_unfinished(counted, doing="sign", policy=policy, below_minimum_reason=reason)
        _fill(report, counted)
        report.below_minimum_reason = reason if report.wbc_cells < policy.min_leukocytes else ""
        report.status = Report.Status.FINAL
        report.signed_by = actor
        report.signed_at = timezone.now()
        report.header = freeze_header(report)
        report.save()
        record_event(
            lab=lab, actor=actor, action=Action.REPORT_SIGNED, obj=report, before=before,
            after=_snapshot(report),
        )  # fmt: skip
        signals.report_changed.send(sender=Report, report=report)
        if report.critical:
            signals.report_critical.send(sender=Report, report=report)
    return report


def amend_report(
    *,
    actor: User,
    report: Report,
    reason: str,
    comment: str | None = None,
    morphology: str | None = None,
    wbc_count: Decimal | None = None,
    below_minimum_reason: str | None = None,
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
        counted = count_batch(batch=old.batch, wbc_count=new.wbc_count)
        below = (
            old.below_minimum_reason if below_minimum_reason is None else below_minimum_reason
        ).strip()
        policy = policy_for(lab=lab)
        _refuse_unfinished(counted, doing="amend", policy=policy, below_minimum_reason=below)
        _fill(new, counted)
        new.below_minimum_reason = below if new.wbc_cells < policy.min_leukocytes else ""
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
        signals.report_changed.send(sender=Report, report=new)
        if new.critical:
            signals.report_critical.send(sender=Report, report=new)
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
