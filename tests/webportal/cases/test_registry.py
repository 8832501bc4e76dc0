"""Registering a checkpoint: its batch guard comes with it, and no lab's model changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.checkpoint import load_ood
from ml.testing import make_tiny_checkpoint
from tests.conftest import TINY_CLASSES
from tests.factories import LabFactory
from webportal.audit.models import Action, AuditEvent
from webportal.cases import registry
from webportal.pipeline import registration

pytestmark = pytest.mark.django_db


def test_a_registered_checkpoint_keeps_its_guards_limits(guarded_checkpoint: Path) -> None:
    stored = load_ood(guarded_checkpoint)
    assert stored is not None
    version = registration.register_model(checkpoint_path=guarded_checkpoint)
    assert version.has_guard
    assert version.guard["thresholds"] == {str(n): t for n, t in stored.thresholds.items()}
    assert version.guard_threshold(20) == pytest.approx(stored.thresholds[20])


def test_the_registry_records_what_the_guard_reads_also_for_a_row_registered_before(
    guarded_checkpoint: Path,
) -> None:
    version = registration.register_model(checkpoint_path=guarded_checkpoint)
    assert version.guard["design"] == "pooled"
    assert version.guard_design == "pooled features"
    # A row registered before the design was recorded gets it when the file is registered again.
    version.guard = {"thresholds": version.guard["thresholds"]}
    version.save()
    again = registration.register_model(checkpoint_path=guarded_checkpoint)
    assert again.pk == version.pk
    again.refresh_from_db()
    assert again.guard["design"] == "pooled"
    assert again.guard["taps"] == []


def test_a_checkpoint_without_a_guard_is_registered_as_having_none(tmp_path: Path) -> None:
    version = registration.register_model(
        checkpoint_path=make_tiny_checkpoint(tmp_path / "m.pt", TINY_CLASSES)
    )
    assert version.guard == {}
    assert not version.has_guard


def test_registering_a_shared_model_changes_no_labs_model(
    tmp_path: Path, guarded_checkpoint: Path
) -> None:
    first = registration.register_model(
        checkpoint_path=make_tiny_checkpoint(tmp_path / "first.pt", TINY_CLASSES)
    )
    on_newest, chose = LabFactory.create(), LabFactory.create(active_model=first)
    assert registry.active_model_for(lab=on_newest) == first

    second = registration.register_model(checkpoint_path=guarded_checkpoint, name="second")

    on_newest.refresh_from_db()
    assert on_newest.active_model == first
    assert registry.active_model_for(lab=on_newest) == first
    assert registry.active_model_for(lab=chose) == first
    # The pin is audited in the lab that was on "the newest shared model", and only there.
    event = AuditEvent.objects.get(action=Action.MODEL_PINNED)
    assert event.lab == on_newest
    assert event.actor is None
    assert event.before == {"model": "newest shared"}
    assert event.after is not None
    assert event.after["model"] == str(first)
    assert "second was registered" in event.after["why"]
    # A lab made after the registration starts on the newest shared model.
    assert registry.active_model_for(lab=LabFactory.create()) == second


def test_registering_a_labs_adapted_model_pins_nothing(tmp_path: Path) -> None:
    shared = registration.register_model(
        checkpoint_path=make_tiny_checkpoint(tmp_path / "shared.pt", TINY_CLASSES)
    )
    lab = LabFactory.create()
    registration.register_model(
        checkpoint_path=make_tiny_checkpoint(tmp_path / "adapted.pt", TINY_CLASSES, seed=1),
        lab=lab,
    )
    lab.refresh_from_db()
    assert lab.active_model is None
    assert registry.active_model_for(lab=lab) == shared
    assert not AuditEvent.objects.filter(action=Action.MODEL_PINNED).exists()
