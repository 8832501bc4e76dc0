"""Registering a model: a checkpoint file becomes a ModelVersion row.

Reading a checkpoint needs PyTorch, so this is the worker's side: `manage.py register_model`,
`seed_demo`, the adaptation worker and the tests use it; the web process never does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db import transaction

from ml.checkpoint import load_ood, read_metadata, sha256_of
from webportal.accounts.models import Lab
from webportal.cases.models import ModelVersion
from webportal.cases.registry import pin_labs_on_newest
from webportal.core.errors import ServiceError


def guard_of(checkpoint_path: Path) -> dict[str, Any]:
    """The checkpoint's batch guard as the registry keeps it ({} = none): its limits per
    batch size and what it reads (the Model page names it): the pooled features alone, or also
    the channel statistics of these early blocks (docs/MODELS.md, "A guard a lab can trust")."""
    ood = load_ood(checkpoint_path)
    if ood is None or not ood.thresholds:
        return {}
    return {
        "thresholds": {str(n): float(t) for n, t in sorted(ood.thresholds.items())},
        "design": "pooled + early" if ood.taps else "pooled",
        "taps": list(ood.taps),
    }


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
    (`pin_labs_on_newest`), and a lab admin's audited choice (`cases.registry.activate_model`)
    is the only way the new one reaches a lab.
    """
    if not checkpoint_path.is_file():
        raise ServiceError(f"No checkpoint file at {checkpoint_path}")
    digest = sha256_of(checkpoint_path)
    existing = ModelVersion.objects.filter(checkpoint_sha256=digest).first()
    if existing is not None:
        if existing.guard and "design" not in existing.guard:
            # Registered before the design was recorded: the same file, so the same guard.
            existing.guard = guard_of(checkpoint_path)
            existing.save(update_fields=["guard"])
        return existing
    meta = read_metadata(checkpoint_path)
    guard = guard_of(checkpoint_path)
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
