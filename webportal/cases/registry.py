"""The model registry: a checkpoint file becomes a ModelVersion row.

Reading a checkpoint needs PyTorch, so this lives apart from `services` (the portal's side):
`manage.py register_model`, `seed_demo` and the workers use it, the web process never does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import transaction

from ml.checkpoint import load_ood, read_metadata, sha256_of
from webportal.accounts.models import Lab
from webportal.audit.models import Action
from webportal.audit.services import record_event
from webportal.cases.models import ModelVersion
from webportal.cases.services import ServiceError


def register_model(
    *,
    checkpoint_path: Path,
    name: str = "",
    lab: Lab | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """Register a checkpoint file; registering the same file again returns the same row.

    `lab`: a model adapted to that lab's cells, seen and chosen by that lab only (None: shared).
    `extra_metrics` join the checkpoint's own (e.g. an adaptation's held-out figures).

    No silent change of model: a new shared model does not become the model of the labs set to
    "the newest shared model"; each is pinned, audited, to the model it ran with until now
    (`pin_labs_on_newest`), and a lab admin's audited choice (`accounts.services.activate_model`)
    is the only way the new one reaches a lab.
    """
    if not checkpoint_path.is_file():
        raise ServiceError(f"No checkpoint file at {checkpoint_path}")
    digest = sha256_of(checkpoint_path)
    existing = ModelVersion.objects.filter(checkpoint_sha256=digest).first()
    if existing is not None:
        return existing
    meta = read_metadata(checkpoint_path)
    ood = load_ood(checkpoint_path)
    guard = (
        {"thresholds": {str(n): float(t) for n, t in sorted(ood.thresholds.items())}}
        if ood is not None and ood.thresholds
        else {}
    )
    with transaction.atomic():
        if lab is None:
            pin_labs_on_newest(registering=name or checkpoint_path.stem)
        return ModelVersion.objects.create(
            name=name or checkpoint_path.stem,
            architecture=meta.arch,
            classes=list(meta.classes),
            checkpoint_path=str(checkpoint_path.resolve()),
            checkpoint_sha256=digest,
            input_size=meta.input_size,
            resize=meta.resize,
            mean=list(meta.mean),
            std=list(meta.std),
            temperature=meta.temperature,
            threshold=meta.threshold,
            metrics={**meta.metrics, **(extra_metrics or {})},
            guard=guard,
            lab=lab,
        )


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
