"""The model registry's portal side: which models a lab may choose and runs with, the lab
admin's audited choice, and the pinning that keeps a new shared model from reaching a lab
silently. Reading a checkpoint file needs PyTorch: registering one is the worker's side
(`webportal.pipeline.registration`); this module never loads it.
"""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q, QuerySet

from webportal.accounts.models import Lab
from webportal.accounts.services import LAB_ADMINS, AccountError, require_role
from webportal.audit.models import Action
from webportal.audit.services import record_event
from webportal.cases.models import ModelVersion
from webportal.core.errors import ServiceError


def active_model_for(*, lab: Lab) -> ModelVersion:
    if lab.active_model is not None:
        return lab.active_model
    # The newest shared model: one adapted to a lab is never any lab's model by being newest.
    newest = ModelVersion.objects.filter(lab=None).order_by("-created_at", "-id").first()
    if newest is None:
        raise ServiceError(
            "No model is registered yet: run `python manage.py register_model PATH` first."
        )
    return newest


def newest_shared_model() -> ModelVersion | None:
    """The newest model every lab may choose (one adapted to a lab never is)."""
    return ModelVersion.objects.filter(lab=None).order_by("-created_at", "-id").first()


def models_for(*, lab: Lab) -> QuerySet[ModelVersion]:
    """The models a lab may choose: the shared ones and those adapted to its own cells."""
    return ModelVersion.objects.filter(Q(lab=None) | Q(lab=lab)).order_by("-created_at", "-id")


def activate_model(
    *, admin: User, lab: Lab, model_version: ModelVersion | None, reason: str = ""
) -> Lab:
    """Choose the model the lab's new batches run with (None: the newest shared model now;
    one registered later reaches the lab only by another such choice: `pin_labs_on_newest`).

    A new model is activated by a person, never silently; batches already uploaded keep
    the model they were uploaded with. A model without a batch guard (`ModelVersion.guard`)
    is refused unless the admin states why (`reason`, kept in the audit event): its batches
    from another microscope or stain would be auto-accepted without any warning.
    """
    require_role(user=admin, lab=lab, allowed=LAB_ADMINS, action="choose the lab's model")
    if model_version is not None and model_version.lab_id not in (None, lab.pk):
        # A model adapted to another lab's cells is that lab's alone.
        raise AccountError(f"{model_version} is not a model of {lab}.")
    chosen = model_version or newest_shared_model()
    reason = reason.strip()
    if chosen is not None and not chosen.has_guard and not reason:
        raise AccountError(
            f"{chosen} has no batch guard: batches unlike its validation cells (another "
            "microscope, stain or camera) would be auto-accepted without a warning. State why "
            "the lab should use it anyway, or choose a model with a guard."
        )
    with transaction.atomic():
        lab = (
            Lab.objects.select_for_update(of=("self",))
            .select_related("active_model")
            .get(pk=lab.pk)
        )
        if lab.active_model == model_version:
            return lab
        before = {"model": str(lab.active_model) if lab.active_model else "newest shared"}
        lab.active_model = model_version
        lab.save(update_fields=["active_model"])
        after: dict[str, str] = {
            "model": str(model_version) if model_version else "newest shared",
            "guard": "yes" if chosen is not None and chosen.has_guard else "none",
        }
        if reason:
            after["reason"] = reason
        record_event(
            lab=lab,
            actor=admin,
            action=Action.MODEL_ACTIVATED,
            obj=lab,
            before=before,
            after=after,
        )
        return lab


def pin_labs_on_newest(*, registering: str) -> None:
    """Before a new shared model is registered: every lab on "the newest shared model" keeps
    the model it runs with now, pinned as its model and audited (`model.pinned`, no actor)."""
    current = ModelVersion.objects.filter(lab=None).order_by("-created_at", "-id").first()
    if current is None:
        return  # no lab ran with any model: the first one changes nothing
    for lab in Lab.objects.select_for_update().filter(active_model=None).order_by("pk"):
        lab.active_model = current
        lab.save(update_fields=["active_model"])
        record_event(
            lab=lab,
            actor=None,
            action=Action.MODEL_PINNED,
            obj=lab,
            before={"model": "newest shared"},
            after={
                "model": str(current),
                "why": f"{registering} was registered; a new model reaches a lab only by a "
                "lab admin's choice",
            },
        )
