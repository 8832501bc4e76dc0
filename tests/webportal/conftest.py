from __future__ import annotations

from datetime import datetime, timedelta

import axes.attempts
import axes.handlers.proxy
import pytest
from django.utils import timezone

from tests.factories import (
    PBC_CLASSES,
    CaseFactory,
    LabFactory,
    MembershipFactory,
    ModelVersionFactory,
)
from webportal.accounts.models import Role


class Clock:
    """Stands in for Django's (and django-axes') clock, so a test can let time pass."""

    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(timezone, "now", clock)
    monkeypatch.setattr(axes.attempts, "now", clock)
    monkeypatch.setattr(axes.handlers.proxy, "now", clock)
    return clock


@pytest.fixture
def lab(db: None):
    return LabFactory.create()


@pytest.fixture
def model_version(db: None):
    return ModelVersionFactory.create(classes=PBC_CLASSES, threshold=0.5)


@pytest.fixture
def people(lab):
    """One member of the lab per role."""
    return {role: MembershipFactory.create(lab=lab, role=role).user for role in Role.values}


@pytest.fixture
def lab_case(lab):
    return CaseFactory.create(lab=lab)
