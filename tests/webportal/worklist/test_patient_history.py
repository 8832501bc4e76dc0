"""A patient's page: every case and batch, the signed differentials side by side."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.factories import (
    BatchFactory,
    CaseFactory,
    MembershipFactory,
    PatientFactory,
    ReportFactory,
    differential,
)
from webportal.accounts.models import Role
from webportal.cases.models import Batch
from webportal.reports.models import Report
from webportal.worklist import selectors

pytestmark = pytest.mark.django_db


def _visit(patient, *, days_ago: int, signed: bool, **counts: int) -> Batch:
    case = CaseFactory.create(lab=patient.lab, patient=patient)
    batch = BatchFactory.create(case=case)
    Batch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    batch.refresh_from_db()
    ReportFactory.create(batch=batch, differential=differential(**counts))
    if signed:
        ReportFactory.create(
            batch=batch,
            version=2,
            status=Report.Status.FINAL,
            signed_at=timezone.now() - timedelta(days=days_ago),
            differential=differential(**counts),
        )
    return batch


@pytest.fixture
def patient():
    return PatientFactory.create(lab=MembershipFactory.create(role=Role.PATHOLOGIST).lab)


def test_signed_visits_are_compared_oldest_to_newest_with_the_change(patient) -> None:
    first = _visit(patient, days_ago=30, signed=True, lymphocyte=30, neutrophil=70)
    unsigned = _visit(patient, days_ago=10, signed=False, lymphocyte=50, neutrophil=50)
    last = _visit(patient, days_ago=1, signed=True, lymphocyte=45, neutrophil=55)
    history = selectors.patient_history(patient=patient)
    assert [visit.batch for visit in history.visits] == [last, unsigned, first]
    assert [visit.batch for visit in history.signed_visits] == [first, last]
    rows = {row.label: row for row in history.trends}
    assert rows["lymphocyte"].percents == [30.0, 45.0]
    assert rows["lymphocyte"].change == 15.0
    assert rows["neutrophil"].change == -15.0
    # Two points on each small chart, the later one higher for lymphocytes (smaller y).
    (x1, y1, _), (x2, y2, _) = rows["lymphocyte"].dots
    assert x1 < x2
    assert y2 < y1


def test_a_class_missing_from_one_report_is_shown_as_missing_not_zero(patient) -> None:
    _visit(patient, days_ago=5, signed=True, lymphocyte=10, neutrophil=90)
    _visit(patient, days_ago=1, signed=True, lymphocyte=10, neutrophil=80, eosinophil=10)
    rows = {row.label: row for row in selectors.patient_history(patient=patient).trends}
    assert rows["eosinophil"].percents == [None, 10.0]
    assert rows["eosinophil"].change is None


def test_the_page_shows_both_visits_side_by_side_and_another_lab_gets_404(patient) -> None:
    _visit(patient, days_ago=20, signed=True, lymphocyte=30, neutrophil=70)
    _visit(patient, days_ago=2, signed=True, lymphocyte=40, neutrophil=60)
    pathologist = patient.lab.memberships.get().user
    client = Client()
    client.force_login(pathologist)
    url = reverse("worklist:patient_detail", args=[patient.pk])
    response = client.get(url)
    assert response.status_code == 200
    content = response.content.decode()
    assert content.count("<polyline") == 2  # one small chart per class
    assert "30.0%" in content
    assert "40.0%" in content
    assert '<span class="change-up">+10.0</span>' in content
    stranger = Client()
    stranger.force_login(MembershipFactory.create(role=Role.PATHOLOGIST).user)
    assert stranger.get(url).status_code == 404


def test_a_patient_without_a_signed_report_says_so(patient) -> None:
    _visit(patient, days_ago=1, signed=False, lymphocyte=1)
    client = Client()
    client.force_login(patient.lab.memberships.get().user)
    response = client.get(reverse("worklist:patient_detail", args=[patient.pk]))
    assert b"No signed report yet" in response.content
    assert b"<polyline" not in response.content
