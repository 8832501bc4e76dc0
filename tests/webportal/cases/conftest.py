from __future__ import annotations

import pytest

from tests.factories import (
    PBC_CLASSES,
    CaseFactory,
    LabFactory,
    MembershipFactory,
    ModelVersionFactory,
)
from webportal.accounts.models import Role


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
