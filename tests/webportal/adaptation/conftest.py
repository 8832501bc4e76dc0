"""What the adaptation tests share: the base model's classes and one case's reviewed cells."""

from __future__ import annotations

import pytest

from tests.factories import ModelVersionFactory
from webportal.cases.models import ModelVersion

CLASSES = ["lymphocyte", "monocyte", "neutrophil"]
# Per case: 3 lymphocytes, 3 neutrophils, 1 monocyte.
PER_CASE = ["lymphocyte"] * 3 + ["neutrophil"] * 3 + ["monocyte"]


@pytest.fixture
def base_model() -> ModelVersion:
    return ModelVersionFactory.create(classes=CLASSES, name="pbc8")
