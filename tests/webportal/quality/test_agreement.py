"""Agreement between the model and the reviewers: kept share per class, matrix, kappa."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from ml.agreement import cohen_kappa
from tests.factories import (
    BatchFactory,
    CaseFactory,
    MembershipFactory,
    ModelVersionFactory,
    ReportFactory,
)
from webportal.accounts.models import Membership, Role
from webportal.cases.models import Batch, Cell, Image, ModelVersion, Prediction, Review
from webportal.quality import selectors
from webportal.reports.models import Report

pytestmark = pytest.mark.django_db

CLASSES = ["lymphocyte", "monocyte", "neutrophil"]


def _signed_batch(
    pathologist: Membership,
    model: ModelVersion,
    cells: list[tuple[str, str | None]],
    *,
    signed_days_ago: int = 1,
    signed: bool = True,
) -> Batch:
    """A batch with one cell per (model label, review label or None), its report signed."""
    batch = BatchFactory.create(case=CaseFactory.create(lab=pathologist.lab), model_version=model)
    for index, (predicted, reviewed) in enumerate(cells):
        image = Image.objects.create(
            batch=batch, original_name=f"c{index}.png", status=Image.Status.OK
        )
        cell = Cell.objects.create(image=image)
        Prediction.objects.create(
            cell=cell, model_version=model, label=predicted, confidence=0.9, probabilities={}
        )
        if reviewed is not None:
            Review.objects.create(
                cell=cell,
                reviewer=pathologist.user,
                reviewer_role=pathologist.role,
                label=reviewed,
            )
    ReportFactory.create(
        batch=batch,
        status=Report.Status.FINAL if signed else Report.Status.PRELIMINARY,
        signed_at=timezone.now() - timedelta(days=signed_days_ago) if signed else None,
    )
    return batch


@pytest.fixture
def pathologist() -> Membership:
    return MembershipFactory.create(role=Role.PATHOLOGIST)


@pytest.fixture
def model() -> ModelVersion:
    return ModelVersionFactory.create(classes=CLASSES)


def test_cells_nobody_relabelled_count_as_kept_and_relabelled_ones_as_changed(
    pathologist, model
) -> None:
    cells = [
        ("lymphocyte", None),
        ("lymphocyte", None),
        ("lymphocyte", "monocyte"),
        ("neutrophil", "neutrophil"),  # looked at and confirmed
        ("neutrophil", "not classed"),
        ("monocyte", None),
    ]
    _signed_batch(pathologist, model, cells)
    result = selectors.agreement(lab=pathologist.lab, model_version=model)
    assert (result.batches, result.cells, result.reviewed_cells) == (1, 6, 3)
    rows = {row.label: row for row in result.per_class}
    assert (rows["lymphocyte"].predicted, rows["lymphocyte"].kept) == (3, 2)
    assert rows["lymphocyte"].changed == 1
    assert rows["lymphocyte"].kept_percent == round(100 * 2 / 3, 1)
    assert (rows["neutrophil"].kept, rows["neutrophil"].not_classed) == (1, 1)
    assert result.columns == [*CLASSES, "other category", "not classed"]
    lymph, mono = CLASSES.index("lymphocyte"), CLASSES.index("monocyte")
    assert result.matrix[lymph][lymph] == 2
    assert result.matrix[lymph][mono] == 1
    assert result.kept == 4
    square = np.array(result.matrix)[:, : len(CLASSES)]
    assert result.kappa == round(cohen_kappa(square), 3)


def test_a_cell_relabelled_to_a_category_the_model_lacks_counts_as_changed(
    pathologist, model
) -> None:
    _signed_batch(pathologist, model, [("lymphocyte", "blast"), ("lymphocyte", None)])
    result = selectors.agreement(lab=pathologist.lab, model_version=model)
    rows = {row.label: row for row in result.per_class}
    assert (rows["lymphocyte"].kept, rows["lymphocyte"].changed) == (1, 1)
    lymph = CLASSES.index("lymphocyte")
    assert result.matrix[lymph][result.columns.index("other category")] == 1
    assert result.cells == 2


def test_unsigned_batches_other_models_other_labs_and_other_dates_are_left_out(
    pathologist, model
) -> None:
    _signed_batch(pathologist, model, [("lymphocyte", None)], signed_days_ago=1)
    _signed_batch(pathologist, model, [("monocyte", None)], signed_days_ago=40)
    _signed_batch(pathologist, model, [("monocyte", None)], signed=False)
    _signed_batch(MembershipFactory.create(role=Role.PATHOLOGIST), model, [("neutrophil", None)])
    recent = selectors.agreement(
        lab=pathologist.lab,
        model_version=model,
        date_from=(timezone.now() - timedelta(days=7)).date(),
    )
    assert (recent.batches, recent.cells) == (1, 1)
    everything = selectors.agreement(lab=pathologist.lab, model_version=model)
    assert (everything.batches, everything.cells) == (2, 2)


def test_kappa_is_left_blank_when_it_is_undefined(pathologist, model) -> None:
    _signed_batch(pathologist, model, [("lymphocyte", None), ("lymphocyte", None)])
    result = selectors.agreement(lab=pathologist.lab, model_version=model)
    assert result.kept_percent == 100.0
    assert result.kappa is None


def test_pathologists_and_admins_see_the_page_staff_do_not_and_other_labs_get_404(
    pathologist, model
) -> None:
    _signed_batch(pathologist, model, [("lymphocyte", None), ("monocyte", "lymphocyte")])
    url = reverse("quality:agreement", args=[pathologist.lab.pk])
    for role, status in [(Role.PATHOLOGIST, 200), (Role.ADMIN, 200), (Role.STAFF, 403)]:
        client = Client()
        client.force_login(MembershipFactory.create(lab=pathologist.lab, role=role).user)
        assert client.get(url).status_code == status, role
    client = Client()
    client.force_login(pathologist.user)
    page = client.get(url).content.decode()
    assert "Cohen's kappa" in page
    assert 'id="matrix"' in page
    stranger = Client()
    stranger.force_login(MembershipFactory.create(role=Role.PATHOLOGIST).user)
    assert stranger.get(url).status_code == 404
