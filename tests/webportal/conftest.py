from __future__ import annotations

from datetime import datetime, timedelta

import axes.attempts
import axes.handlers.proxy
import pytest
from django.utils import timezone


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
