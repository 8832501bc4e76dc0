"""The worklist: what waits for review or sign-off, STAT first then oldest, per lab."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
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
from webportal.worklist.selectors import Queue, WorklistFilters

pytestmark = pytest.mark.django_db


def _batch(lab, *, age_hours: float, priority: str = "routine", status: str = "done", **report):
    case = CaseFactory.create(lab=lab, patient=PatientFactory.create(lab=lab))
    batch = BatchFactory.create(case=case, priority=priority, status=status)
    Batch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(hours=age_hours))
    if status == "done":
        ReportFactory.create(batch=batch, **report)
    return batch


@pytest.fixture
def pathologist():
    return MembershipFactory.create(role=Role.PATHOLOGIST)


def test_stat_batches_come_first_then_the_oldest(pathologist) -> None:
    lab = pathologist.lab
    new_routine = _batch(lab, age_hours=1)
    old_routine = _batch(lab, age_hours=10)
    new_stat = _batch(lab, age_hours=2, priority="stat")
    old_stat = _batch(lab, age_hours=3, priority="stat")
    got = list(selectors.worklist(user=pathologist.user, filters=WorklistFilters()))
    assert got == [old_stat, new_stat, old_routine, new_routine]


def test_only_unsigned_classified_batches_wait_for_review(pathologist) -> None:
    lab = pathologist.lab
    waiting = _batch(lab, age_hours=1)
    signed = _batch(lab, age_hours=2)
    ReportFactory.create(
        batch=signed, version=2, status=Report.Status.FINAL, signed_at=timezone.now()
    )
    running = _batch(lab, age_hours=3, status="processing")
    failed = _batch(lab, age_hours=4, status="failed")
    user = pathologist.user

    def queue(name: str) -> list[Batch]:
        return list(selectors.worklist(user=user, filters=WorklistFilters(queue=name)))

    assert queue(Queue.WAITING) == [waiting]
    assert queue(Queue.SIGNED) == [signed]
    assert queue(Queue.RUNNING) == [running]
    assert queue(Queue.FAILED) == [failed]
    assert len(queue(Queue.ALL)) == 4


def test_another_labs_batches_never_appear(pathologist) -> None:
    _batch(MembershipFactory.create().lab, age_hours=1)
    assert not selectors.worklist(user=pathologist.user, filters=WorklistFilters(queue="all"))


def test_filters_by_priority_date_accession_patient_and_search(pathologist) -> None:
    lab = pathologist.lab
    stat = _batch(lab, age_hours=1, priority="stat")
    old = _batch(lab, age_hours=24 * 5)
    user = pathologist.user

    def found(**kwargs: object) -> list[Batch]:
        return list(selectors.worklist(user=user, filters=WorklistFilters(**kwargs)))  # type: ignore[arg-type]

    assert found(priority="stat") == [stat]
    assert found(date_to=(timezone.now() - timedelta(days=2)).date()) == [old]
    assert found(date_from=timezone.now().date()) == [stat]
    assert found(accession=stat.case.accession_number.lower()) == [stat]
    assert found(patient=old.case.patient.external_id) == [old]
    assert found(search=old.case.patient.external_id[-3:]) == [old]
    assert found(search="no such thing") == []


def test_the_page_shows_unidentified_counts_in_as_many_queries_for_13_rows_as_for_1(
    pathologist,
) -> None:
    lab = pathologist.lab
    client = Client()
    client.force_login(pathologist.user)

    def queries_for_page() -> tuple[int, bytes]:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(reverse("worklist:worklist"))
        assert response.status_code == 200
        return len(queries), response.content

    _batch(lab, age_hours=20, differential=differential(lymphocyte=100, unidentified=0))
    few, content = queries_for_page()
    assert b'<span class="count-zero">0</span>' in content
    for hours in range(12):
        _batch(lab, age_hours=hours, differential=differential(lymphocyte=90, unidentified=7))
    many, content = queries_for_page()
    assert content.count(b'<span class="count-unidentified">7</span>') == 12
    assert many == few  # no query per row


def test_the_page_filters_from_the_query_string_and_ignores_nonsense(pathologist) -> None:
    stat = _batch(pathologist.lab, age_hours=1, priority="stat")
    routine = _batch(pathologist.lab, age_hours=1)
    client = Client()
    client.force_login(pathologist.user)
    response = client.get(reverse("worklist:worklist"), {"priority": "stat"})
    assert f"Batch #{stat.pk}".encode() in response.content
    assert f"Batch #{routine.pk}".encode() not in response.content
    response = client.get(reverse("worklist:worklist"), {"date_from": "yesterday-ish"})
    assert response.status_code == 200
    assert b"not understood" in response.content


def test_staff_see_their_labs_running_and_failed_batches_beside_the_list() -> None:
    staff = MembershipFactory.create(role=Role.STAFF)
    running = _batch(staff.lab, age_hours=1, status="queued")
    failed = _batch(staff.lab, age_hours=2, status="failed")
    client = Client()
    client.force_login(staff.user)
    response = client.get(reverse("worklist:worklist"))
    queue = response.content.split(b'id="queue"')[1]
    assert f"Batch #{running.pk}".encode() in queue
    assert f"Batch #{failed.pk}".encode() in queue
