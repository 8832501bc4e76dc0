from __future__ import annotations

from datetime import datetime, timedelta

import axes.attempts
import axes.handlers.proxy
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tests.factories import (
    PBC_CLASSES,
    CaseFactory,
    LabFactory,
    MembershipFactory,
    ModelVersionFactory,
)
from webportal.accounts.models import Role
from webportal.api import tokens
from webportal.api.models import ApiToken


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


# --- the API: a token and a client that sends it (API, notifications and report tests) ---


def bearer(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


@pytest.fixture
def issued(member) -> tokens.IssuedToken:
    """A read-write token for an integrator account of the member's lab."""
    return tokens.issue_token(lab=member.lab, username="lis", name="LIS")


@pytest.fixture
def api(issued: tokens.IssuedToken) -> APIClient:
    return bearer(issued.plaintext)


@pytest.fixture
def read_only_api(member) -> APIClient:
    issued = tokens.issue_token(lab=member.lab, username="lis-reader", scope=ApiToken.Scope.READ)
    return bearer(issued.plaintext)
