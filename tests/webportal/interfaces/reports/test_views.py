"""Report pages: sign, amend and download through the portal, per role, audited."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import allow_small_counts, classified_batch
from webportal.accounts.models import Role
from webportal.audit.models import AuditEvent
from webportal.cases.models import Cell
from webportal.reports.models import Report
from webportal.reports.reviews import review_cells


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def batch(lab_case, model_version):
    allow_small_counts(lab_case.lab)  # a small batch: the minimum has its own tests
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.9)] * 5 + [("lymphocyte", 0.2)],
    )


def test_signing_with_unidentified_cells_is_refused_on_the_page_with_the_reason(batch, people):
    report = batch.reports.get()
    response = _client(people[Role.PATHOLOGIST]).post(
        reverse("reports:edit", args=[report.pk]), {"sign": "1", "comment": "ok"}
    )
    assert response.status_code == 400
    assert "1 counted cell is still unidentified" in response.content.decode()
    report.refresh_from_db()
    assert report.status == Report.Status.PRELIMINARY


def test_a_pathologist_signs_amends_and_downloads_and_each_step_is_audited(batch, people):
    pathologist = people[Role.PATHOLOGIST]
    client = _client(pathologist)
    review_cells(
        actor=pathologist,
        cells=Cell.objects.filter(image__batch=batch, predictions__confidence__lt=0.5),
        label="lymphocyte",
    )
    report = batch.reports.get()
    signed = client.post(
        reverse("reports:edit", args=[report.pk]),
        {"sign": "1", "comment": "Normal.", "morphology": "", "wbc_count": "6.4"},
    )
    assert signed.status_code == 302
    report.refresh_from_db()
    assert (report.status, report.signed_by) == (Report.Status.FINAL, pathologist)
    page = client.get(reverse("reports:report", args=[report.pk])).content.decode()
    assert "Amend report" in page
    assert "Sign report" not in page

    amended = client.post(
        reverse("reports:amend", args=[report.pk]),
        {"reason": "Typo in the comment.", "comment": "Normal smear.", "wbc_count": "6.4"},
    )
    assert amended.status_code == 302
    new = batch.reports.get(version=2)
    assert amended["Location"] == reverse("reports:report", args=[new.pk])
    old_page = client.get(reverse("reports:report", args=[report.pk])).content.decode()
    assert "superseded" in old_page

    pdf = client.get(reverse("reports:pdf", args=[new.pk]))
    assert pdf.status_code == 200
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    assert "attachment" in pdf["Content-Disposition"]
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert actions[-3:] == ["report.signed", "report.amended", "report.downloaded"]


def test_an_amendment_without_a_reason_is_refused(batch, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    review_cells(actor=pathologist, cells=Cell.objects.filter(image__batch=batch), label="monocyte")
    client = _client(pathologist)
    report = batch.reports.get()
    client.post(reverse("reports:edit", args=[report.pk]), {"sign": "1"})
    response = client.post(reverse("reports:amend", args=[report.pk]), {"reason": ""})
    assert response.status_code == 400
    assert batch.reports.count() == 1


def test_staff_see_no_sign_button_and_cannot_sign_by_posting(batch, people) -> None:
    client = _client(people[Role.STAFF])
    review_cells(
        actor=people[Role.STAFF], cells=Cell.objects.filter(image__batch=batch), label="monocyte"
    )
    report = batch.reports.get()
    page = client.get(reverse("reports:report", args=[report.pk])).content.decode()
    assert "Sign report" not in page
    assert "Save remarks" in page
    response = client.post(reverse("reports:edit", args=[report.pk]), {"sign": "1"})
    assert response.status_code == 400
    assert "Only a pathologist" in response.content.decode()
    report.refresh_from_db()
    assert report.status == Report.Status.PRELIMINARY
