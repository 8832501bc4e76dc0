"""Adapting a model to a lab: starting it, following it, and the admin's decision.

The portal's side (no PyTorch). A lab admin starts an adaptation of the lab's model to its
reviewed cells; the plan (selectors.adaptation_plan) is fixed when it starts and kept on the
job, and the task goes by name, after commit, to the `adapt` queue, where a worker of its own
runs it (webportal.pipeline.adaptation). The result is a new ModelVersion of this lab, inactive:
the admin activates it for the lab's new batches, or not. Every step is audited.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from webportal.accounts.models import Lab
from webportal.accounts.services import LAB_ADMINS, require_role
from webportal.adaptation.models import AdaptationJob
from webportal.adaptation.selectors import (
    active_job,
    adaptation_plan,
    is_stale,
    stale_reason,
    why_not_activatable,
)
from webportal.audit.models import Action
from webportal.audit.services import record_event
from webportal.cases.models import ModelVersion
from webportal.cases.registry import activate_model, active_model_for
from webportal.celery import ADAPT_MODEL_TASK, ADAPT_QUEUE, app
from webportal.core.errors import ServiceError

# Audit actions (labelled, and a filter of the trail browser).
ADAPTATION_STARTED = Action.ADAPTATION_STARTED
ADAPTATION_FINISHED = Action.ADAPTATION_FINISHED
ADAPTATION_FAILED = Action.ADAPTATION_FAILED
ADAPTATION_ACTIVATED = Action.ADAPTATION_ACTIVATED
ADAPTATION_DECLINED = Action.ADAPTATION_DECLINED


def send_adaptation(*, job_id: int) -> None:
    app.send_task(ADAPT_MODEL_TASK, args=(job_id,), queue=ADAPT_QUEUE)


def start_adaptation(*, admin: User, lab: Lab) -> AdaptationJob:
    """Start adapting the lab's model (its active one, else the newest shared) to the lab's
    reviewed cells. Refused with the reason: not the lab's admin, an adaptation already
    running, too few reviewed cells (the message says how many each class has and needs)."""
    require_role(user=admin, lab=lab, allowed=LAB_ADMINS, action="adapt the lab's model")
    base_model = active_model_for(lab=lab)
    with transaction.atomic():
        # One adaptation per lab at a time: the lab row is the lock.
        lab = Lab.objects.select_for_update().get(pk=lab.pk)
        running = active_job(lab=lab)
        if running is not None and is_stale(running):
            _fail(running, reason=stale_reason(running))
        elif running is not None:
            raise ServiceError(
                f"An adaptation of {lab} is already {running.get_status_display().lower()} "
                f"(started {timezone.localtime(running.created_at):%Y-%m-%d %H:%M})."
            )
        plan = adaptation_plan(lab=lab, base_model=base_model)
        if not plan.ready:
            raise ServiceError(plan.problem)
        job = AdaptationJob.objects.create(
            lab=lab, base_model=base_model, requested_by=admin, plan=plan.as_json()
        )
        record_event(
            lab=lab,
            actor=admin,
            action=ADAPTATION_STARTED,
            obj=job,
            after={
                "base_model": str(base_model),
                "group_by": plan.group_by,
                "train": job.plan["train"],
                "heldout": job.plan["heldout"],
            },
        )
        job_id = job.pk
        transaction.on_commit(lambda: send_adaptation(job_id=job_id))
    return job


def decide(*, admin: User, job: AdaptationJob, activate: bool) -> AdaptationJob:
    """The admin's decision on a finished adaptation: activate its model for the lab's new
    batches (audited as the model's activation too), or keep the current model."""
    require_role(user=admin, lab=job.lab, allowed=LAB_ADMINS, action="choose the lab's model")
    with transaction.atomic():
        job = AdaptationJob.objects.select_for_update().select_related("lab").get(pk=job.pk)
        allowed = (
            {AdaptationJob.Status.DONE, AdaptationJob.Status.DECLINED}
            if activate
            else {AdaptationJob.Status.DONE, AdaptationJob.Status.ACTIVATED}
        )
        if job.status not in allowed or job.result_model is None:
            raise ServiceError(
                f"This adaptation is {job.get_status_display().lower()}: nothing to decide."
            )
        lab = job.lab
        if activate:
            refused = why_not_activatable(job)
            if refused:
                raise ServiceError(refused)
            activate_model(admin=admin, lab=lab, model_version=job.result_model)
            status, action = AdaptationJob.Status.ACTIVATED, ADAPTATION_ACTIVATED
        else:
            lab.refresh_from_db(fields=["active_model"])
            if lab.active_model_id == job.result_model_id:
                # Declining the model in use puts the base model back: the lab ran with it
                # before, so no guard is asked of it again (the reason is audited).
                activate_model(
                    admin=admin,
                    lab=lab,
                    model_version=job.base_model,
                    reason="the adapted model was declined: back to the model it adapted",
                )
            status, action = AdaptationJob.Status.DECLINED, ADAPTATION_DECLINED
        before = job.status
        job.status = status
        job.save(update_fields=["status"])
        record_event(
            lab=lab,
            actor=admin,
            action=action,
            obj=job,
            before={"status": before},
            after={"status": status, "model": str(job.result_model)},
        )
    return job


# --- the worker's bookkeeping (webportal.pipeline.adaptation calls these) ----------------------


def claim(*, job_id: int) -> AdaptationJob | None:
    """queued -> running; None when the job is not queued (a repeated message, or a job
    already running, finished or failed): a second delivery changes nothing."""
    now = timezone.now()
    claimed = AdaptationJob.objects.filter(pk=job_id, status=AdaptationJob.Status.QUEUED).update(
        status=AdaptationJob.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        deliveries=F("deliveries") + 1,
    )
    if not claimed:
        return None
    return AdaptationJob.objects.select_related("lab", "base_model").get(pk=job_id)


def report_progress(*, job_id: int, stage: str, **fields: Any) -> None:
    """The stage reached (and e.g. epochs done), with a heartbeat; only while running."""
    AdaptationJob.objects.filter(pk=job_id, status=AdaptationJob.Status.RUNNING).update(
        stage=stage, heartbeat_at=timezone.now(), **fields
    )


def finish(*, job_id: int, result_model: ModelVersion, figures: dict[str, Any]) -> None:
    """Running -> done, with the new model and the held-out figures; audited (by the system)."""
    with transaction.atomic():
        job = AdaptationJob.objects.select_for_update().select_related("lab").get(pk=job_id)
        if job.status != AdaptationJob.Status.RUNNING:
            return
        job.status = AdaptationJob.Status.DONE
        job.stage = AdaptationJob.Stage.FINISHED
        job.result_model = result_model
        job.figures = figures
        job.finished_at = job.heartbeat_at = timezone.now()
        job.save()
        record_event(
            lab=job.lab,
            actor=None,
            action=ADAPTATION_FINISHED,
            obj=job,
            after={
                "model": str(result_model),
                "base_accuracy": figures["base"]["accuracy"],
                "adapted_accuracy": figures["adapted"]["accuracy"],
                "heldout_cells": figures["adapted"]["n"],
            },
        )


def _fail(job: AdaptationJob, *, reason: str) -> None:
    AdaptationJob.objects.filter(pk=job.pk).update(
        status=AdaptationJob.Status.FAILED, error=reason, finished_at=timezone.now()
    )
    record_event(
        lab=job.lab, actor=None, action=ADAPTATION_FAILED, obj=job, after={"reason": reason}
    )


def mark_failed(*, job_id: int, reason: str) -> None:
    """A queued or running job fails with the reason shown on its page; audited."""
    with transaction.atomic():
        job = AdaptationJob.objects.select_for_update().select_related("lab").get(pk=job_id)
        if job.is_active:
            _fail(job, reason=reason)


def fail_running(*, reason: str) -> list[int]:
    """Fail every running job with the reason (their worker is known to be gone); their ids."""
    failed = []
    running = AdaptationJob.objects.filter(status=AdaptationJob.Status.RUNNING)
    for job_id in running.values_list("pk", flat=True):
        with transaction.atomic():
            job = AdaptationJob.objects.select_for_update().select_related("lab").get(pk=job_id)
            if job.status == AdaptationJob.Status.RUNNING:
                _fail(job, reason=reason)
                failed.append(job_id)
    return failed
