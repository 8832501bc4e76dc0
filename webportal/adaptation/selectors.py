"""Reads for adapting a model to a lab: the lab's reviewed cells and how they are split.

Pure Django (no PyTorch): the lab admin's page shows the plan before anything is started.

A cell counts when a person reviewed it: its latest review's label (a confirmation or a
correction) is the label it is taught and measured with. "Not classed" and labels the base
model has no class for are left out. Cells of a signed report that nobody reviewed are not
used: their label would be the model's own answer.

The held-out cells are whole cases (a patient's smear: one stain, one camera, often near-copies
of a cell), so the figures measure the model on cases it was not tuned on. The split is
deterministic: cases are taken in the order of a hash of (lab, case), so the same reviews give
the same split, and new reviews move few cells. A lab with too few cases for that is split by
image instead (a field's cells stay on one side), and the plan says so.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import QuerySet, Subquery
from django.utils import timezone

from webportal.accounts.models import Lab
from webportal.adaptation.models import AdaptationJob
from webportal.cases.models import Cell, Image, ModelVersion, Review, adaptation_choice_text
from webportal.cases.selectors import latest_review

TRAIN, HELDOUT = "train", "heldout"


@dataclass(frozen=True)
class ReviewedCell:
    cell_id: int
    label: str  # one of the base model's classes, as the model spells it
    case_id: int
    image_id: int


@dataclass
class Plan:
    """Which reviewed cells train and which measure an adapted model, and what is missing."""

    base_model: ModelVersion
    group_by: str  # "case" or "image": what never straddles the split
    classes: list[str]  # the classes fine-tuned and measured (enough cells on both sides)
    train: dict[str, int]  # class -> cells, for every class with a reviewed cell
    heldout: dict[str, int]
    left_out: dict[str, str]  # class -> why it is not used
    not_used: dict[str, int]  # "not classed", "a category the model does not know ..."
    problem: str  # empty when the plan can be run
    cells: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # side -> (id, label)
    heldout_cases: int = 0
    heldout_images: int = 0

    @property
    def ready(self) -> bool:
        return not self.problem

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per class with reviewed cells, for the page."""
        labels = sorted(set(self.train) | set(self.heldout))
        return [
            {
                "label": label,
                "train": self.train.get(label, 0),
                "heldout": self.heldout.get(label, 0),
                "used": label in self.classes,
                "why": self.left_out.get(label, ""),
            }
            for label in labels
        ]

    def as_json(self) -> dict[str, Any]:
        """What the job keeps: the counts, and the cells with their labels at the start."""
        return {
            "group_by": self.group_by,
            "classes": self.classes,
            "train": {c: self.train.get(c, 0) for c in self.classes},
            "heldout": {c: self.heldout.get(c, 0) for c in self.classes},
            "left_out": self.left_out,
            "not_used": self.not_used,
            "min_train": settings.ADAPT_MIN_TRAIN_CELLS,
            "min_heldout": settings.ADAPT_MIN_HELDOUT_CELLS,
            "heldout_cases": self.heldout_cases,
            "heldout_images": self.heldout_images,
            "cells": {side: [list(pair) for pair in pairs] for side, pairs in self.cells.items()},
        }


def reviewed_cells(*, lab: Lab, classes: Sequence[str]) -> tuple[list[ReviewedCell], Counter[str]]:
    """The lab's cells whose latest review gives one of `classes` (matched case-insensitively);
    and how many reviewed cells were not usable, by reason. One query."""
    latest = latest_review().values("label")[:1]
    # Only reviewed cells get the latest-review subquery (a lab has far more cells than reviews).
    reviewed = Review.objects.filter(cell__image__batch__case__lab=lab).values("cell_id")
    rows = (
        Cell.objects.filter(
            pk__in=reviewed, image__batch__case__lab=lab, image__status=Image.Status.OK
        )
        .annotate(reviewed=Subquery(latest))
        .order_by("pk")
        .values_list("pk", "reviewed", "image__batch__case_id", "image_id")
    )
    by_lower = {name.lower(): name for name in classes}
    found: list[ReviewedCell] = []
    skipped: Counter[str] = Counter()
    for cell_id, label, case_id, image_id in rows:
        if label == Review.NOT_CLASSED:
            skipped["not classed"] += 1
        elif label.lower() not in by_lower:
            # A category of the lab's vocabulary the model lacks (blast, smudge cell, ...): a
            # model is never taught a class it does not have (issue 19).
            skipped["of a category the model does not know (never taught to it)"] += 1
        else:
            found.append(ReviewedCell(cell_id, by_lower[label.lower()], case_id, image_id))
    return found, skipped


def _order_key(lab_id: int, kind: str, key: int) -> str:
    return hashlib.sha256(f"{lab_id}:{kind}:{key}".encode()).hexdigest()


def _group_of(cell: ReviewedCell, group_by: str) -> int:
    return cell.case_id if group_by == "case" else cell.image_id


def split_groups(
    cells: Sequence[ReviewedCell], *, lab_id: int, group_by: str, heldout_share: float
) -> set[int]:
    """The groups (case or image ids) held out: taken in hash order while a class they hold
    still has fewer held-out cells than its share (at least the minimum; nothing for a class
    too small to take part), unless that would leave a class that had enough training cells
    with too few."""
    groups: dict[int, Counter[str]] = defaultdict(Counter)
    for cell in cells:
        groups[_group_of(cell, group_by)][cell.label] += 1
    total: Counter[str] = Counter(cell.label for cell in cells)
    min_train, min_held = settings.ADAPT_MIN_TRAIN_CELLS, settings.ADAPT_MIN_HELDOUT_CELLS
    # A class too small to take part at all does not pull cases into the held-out side.
    target = {
        c: max(min_held, math.ceil(heldout_share * n)) if n >= min_train + min_held else 0
        for c, n in total.items()
    }
    held: Counter[str] = Counter()
    chosen: set[int] = set()
    for group in sorted(groups, key=lambda g: _order_key(lab_id, group_by, g)):
        counts = groups[group]
        if not any(held[c] < target[c] for c in counts):
            continue
        starves = any(
            total[c] - held[c] >= min_train and total[c] - held[c] - n < min_train
            for c, n in counts.items()
        )
        if starves:
            continue
        chosen.add(group)
        held.update(counts)
    return chosen


def _plan_for(
    cells: Sequence[ReviewedCell], *, base_model: ModelVersion, lab_id: int, group_by: str
) -> Plan:
    share = settings.ADAPT_HELDOUT_PERCENT / 100
    held_groups = split_groups(cells, lab_id=lab_id, group_by=group_by, heldout_share=share)
    held_out = [c for c in cells if _group_of(c, group_by) in held_groups]
    held_ids = {c.cell_id for c in held_out}
    training = [c for c in cells if c.cell_id not in held_ids]
    train = Counter(c.label for c in training)
    heldout = Counter(c.label for c in held_out)
    min_train, min_held = settings.ADAPT_MIN_TRAIN_CELLS, settings.ADAPT_MIN_HELDOUT_CELLS
    left_out: dict[str, str] = {}
    for label in sorted(set(train) | set(heldout)):
        if train[label] < min_train or heldout[label] < min_held:
            left_out[label] = (
                f"{train[label]} to train on and {heldout[label]} held out; it needs "
                f"{min_train} and {min_held}"
            )
    classes = [c for c in base_model.classes if (train[c] or heldout[c]) and c not in left_out]
    plan = Plan(
        base_model=base_model,
        group_by=group_by,
        classes=classes,
        train=dict(train),
        heldout=dict(heldout),
        left_out=left_out,
        not_used={},
        problem="",
        cells={
            TRAIN: [(c.cell_id, c.label) for c in training if c.label in classes],
            HELDOUT: [(c.cell_id, c.label) for c in held_out if c.label in classes],
        },
    )
    used = [c for c in held_out if c.label in classes]
    plan.heldout_cases = len({c.case_id for c in used})
    plan.heldout_images = len({c.image_id for c in used})
    return plan


def adaptation_plan(*, lab: Lab, base_model: ModelVersion) -> Plan:
    """The split of the lab's reviewed cells for adapting `base_model`, by case when that
    leaves at least as many classes usable as splitting by image, else by image."""
    cells, skipped = reviewed_cells(lab=lab, classes=base_model.classes)
    by_case = _plan_for(cells, base_model=base_model, lab_id=lab.pk, group_by="case")
    by_image = _plan_for(cells, base_model=base_model, lab_id=lab.pk, group_by="image")
    plan = by_case if len(by_case.classes) >= len(by_image.classes) else by_image
    plan.not_used = dict(skipped)
    if len(plan.classes) < 2:
        plan.problem = (
            f"Too few reviewed cells to adapt the model yet: {len(cells)} reviewed cells of "
            f"{lab} are usable, and a class takes part only with at least "
            f"{settings.ADAPT_MIN_TRAIN_CELLS} reviewed cells to train on and "
            f"{settings.ADAPT_MIN_HELDOUT_CELLS} held out (from other cases) to measure on; "
            f"at least two classes must qualify, {len(plan.classes)} "
            f"{'does' if len(plan.classes) == 1 else 'do'}. Review more cells of the lab's "
            "batches (confirming a correct label counts too)."
        )
    return plan


def jobs_of(*, lab: Lab) -> QuerySet[AdaptationJob]:
    return AdaptationJob.objects.filter(lab=lab).select_related(
        "base_model", "result_model", "requested_by"
    )


def active_job(*, lab: Lab) -> AdaptationJob | None:
    active = [AdaptationJob.Status.QUEUED, AdaptationJob.Status.RUNNING]
    return jobs_of(lab=lab).filter(status__in=active).first()


def is_stale(job: AdaptationJob) -> bool:
    """A running job whose worker has shown no sign of life for ADAPT_STALE_AFTER_SECONDS, or
    a queued one no worker took in that time (no worker consumes `adapt`, or the broker lost
    the message)."""
    if job.status == AdaptationJob.Status.RUNNING:
        last = job.heartbeat_at or job.started_at or job.created_at
    elif job.status == AdaptationJob.Status.QUEUED:
        last = job.created_at
    else:
        return False
    return timezone.now() - last > timedelta(seconds=settings.ADAPT_STALE_AFTER_SECONDS)


def stale_reason(job: AdaptationJob) -> str:
    minutes = round(settings.ADAPT_STALE_AFTER_SECONDS / 60)
    if job.status == AdaptationJob.Status.QUEUED:
        return (
            f"No adaptation worker took it within {minutes} minutes: is a worker consuming "
            "the adapt queue running (celery -A workers worker -Q adapt)?"
        )
    return f"Its worker gave no sign of life for {minutes} minutes: it stopped."


def _percent(value: Any) -> float | None:
    return None if value is None else 100 * float(value)


def figure_rows(job: AdaptationJob) -> list[dict[str, Any]]:
    """Per class: training cells, held-out cells, and the share of them each model got right
    (recall, in percent)."""
    base = job.figures.get("base", {}).get("per_class", {})
    adapted = job.figures.get("adapted", {}).get("per_class", {})
    train = job.plan.get("train", {})
    heldout = job.plan.get("heldout", {})
    rows = []
    for label in job.plan.get("classes", []):
        b, a = base.get(label, {}), adapted.get(label, {})
        rows.append(
            {
                "label": label,
                "train": train.get(label, 0),
                "n": b.get("support", a.get("support", heldout.get(label, 0))),
                "base": _percent(b.get("recall")),
                "adapted": _percent(a.get("recall")),
            }
        )
    return rows


SUMMARY = (
    ("accuracy", "Right, of all held-out cells"),
    ("macro_f1", "Macro-F1 (classes weighted alike)"),
    ("coverage", "Auto-accepted (above the model's threshold)"),
    ("accuracy_above_threshold", "Right, of the auto-accepted cells"),
)


def summary_rows(job: AdaptationJob) -> list[dict[str, Any]]:
    """The overall figures of both models on the held-out cells, in percent."""
    base, adapted = job.figures.get("base", {}), job.figures.get("adapted", {})
    return [
        {"label": label, "base": _percent(base.get(key)), "adapted": _percent(adapted.get(key))}
        for key, label in SUMMARY
    ]


def why_not_activatable(job: AdaptationJob) -> str:
    """Why the job's model may not be activated; empty when it may.

    A model without a confidence threshold (no confidence at which its own validation cells
    were right often enough: ml.metrics.choose_threshold) would accept every cell without a
    person looking: measured on 12 cells a class of a lab the model never saw
    (bench/README.md, "Adaptation"), that is what a small adaptation gives.
    """
    model = job.result_model
    if model is None:
        return "There is no adapted model."
    if model.threshold is None:
        target = model.metrics.get("target_accuracy")
        share = f"{100 * float(target):g}% " if target is not None else ""
        return (
            "The adapted model has no confidence threshold: at no confidence were its own "
            f"validation cells {share}right, so it would accept every cell without review. "
            "It cannot be activated; review more cells of the lab and adapt again."
        )
    if not model.has_guard:
        why = (job.figures.get("guard") or {}).get("none_because", "")
        return (
            "The adapted model has no batch guard"
            + (f" ({why})" if why else "")
            + ": a batch unlike the lab's reviewed cells would be auto-accepted without a "
            "warning. Review more cells of the lab and adapt again; a lab admin may still "
            "choose it on the Model page, stating why."
        )
    return ""


# How each ADAPT_METHOD adapts, in a lab admin's words (docs/MODELS.md, "From the portal").
METHODS = {
    "few-cell": (
        "few-cell: the model's last layer refitted on the lab's reviewed cells, after either "
        "the lab's own BatchNorm statistics or colour normalisation towards the training "
        "stain, whichever named more reviewed cells right; each cell is classified as is, "
        "mirrored, turned and transposed, and the answers averaged (the methods that did best "
        "with 10-25 reviewed cells a class)"
    ),
    "fine-tune": "fine-tune: the model's last blocks retrained on the reviewed cells",
}


def method_text(job: AdaptationJob) -> str:
    """How the job adapted the model ("" before it has figures). Jobs from before the method
    was recorded fine-tuned."""
    if not job.figures:
        return ""
    method = str(job.figures.get("method", "fine-tune"))
    return METHODS.get(method, method)


def choice_text(job: AdaptationJob) -> str:
    """Which way a few-cell adaptation adapted the model and why ("" for other jobs)."""
    return adaptation_choice_text(job.figures or {})


def auto_accept_text(job: AdaptationJob) -> str:
    """What the adapted model accepts without a person, and what that rests on."""
    accept = job.figures.get("auto_accept")
    model = job.result_model
    if accept is None or model is None:
        return ""
    cells = accept.get("cells")
    if model.auto_accepts_nothing:
        needed = accept.get("cells_needed")
        return (
            f"No auto-accepting: too few reviewed cells ({cells}; {needed} needed for a "
            "threshold shown 99% right with 95% confidence). Every cell this model classifies "
            "waits for a person; review more cells and adapt again to earn a threshold."
        )
    if accept.get("lower_bound") is not None:
        return (
            f"Auto-accepts cells at a confidence of at least {accept['threshold']:.3f}: of "
            f"{cells} reviewed cells, each scored by a model fitted without it, the "
            f"{accept['above']} at or above it were {accept['right_above']} right (95% lower "
            f"bound of their accuracy {100 * accept['lower_bound']:.1f}%)."
        )
    if model.threshold is None:
        return "No confidence threshold: every cell would be accepted without review."
    return (
        f"Auto-accepts cells at a confidence of at least {model.threshold:.3f}, the lowest at "
        f"which its own {cells} validation cells were right often enough, as measured on so "
        "few cells (no bound)."
    )
