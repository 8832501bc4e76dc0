"""Issue 19: the lab's cell vocabulary through the services, the lab admin's page, the review
gallery and the API; adaptation never learns a category the model lacks."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tests.factories import allow_small_counts, classified_batch
from webportal.accounts.models import Role
from webportal.adaptation.selectors import reviewed_cells
from webportal.api.tokens import issue_personal_token
from webportal.audit.models import AuditEvent
from webportal.cases.models import Cell
from webportal.reports import services
from webportal.reports.models import CellCategory
from webportal.reports.reviews import review_cells, review_labels


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def batch(lab_case, model_version):
    allow_small_counts(lab_case.lab)
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.9)] * 6 + [("lymphocyte", 0.9)] * 3 + [("monocyte", 0.2)],
    )


def test_the_default_vocabulary_has_the_morphology_categories_the_model_lacks(
    batch, model_version
) -> None:
    labels = review_labels(model_version=model_version, lab=batch.case.lab)
    assert labels[: len(model_version.classes)] == list(model_version.classes)
    for label in ["blast", "promyelocyte", "myelocyte", "metamyelocyte", "band neutrophil",
                  "variant lymphocyte", "plasma cell", "smudge cell", "artefact"]:  # fmt: skip
        assert label in labels
    assert labels[-1] == "not classed"


def test_a_blast_review_makes_the_report_critical(batch, people) -> None:
    cell = Cell.objects.filter(image__batch=batch, predictions__confidence__lt=0.5).get()
    review_cells(actor=people[Role.STAFF], cells=[cell], label="Blasts")  # spelling aside
    report = batch.reports.get()
    assert report.critical
    rows = {row["label"]: row for row in report.differential}
    assert (rows["blast"]["count"], rows["blast"]["loinc"]) == (1, "26446-5")
    assert report.flags[0]["code"] == "critical"


def test_the_lab_admin_adds_a_category_and_marks_another_critical_on_the_page(
    batch, people
) -> None:
    lab = batch.case.lab
    url = reverse("reports:vocabulary", args=[lab.pk])
    admin = _client(people[Role.ADMIN])
    page = admin.get(url)
    assert page.status_code == 200
    assert "26446-5" in page.content.decode()
    added = admin.post(
        url,
        {"action": "add", "label": "Hairy cell", "group": "wbc", "loinc": "35058-7"},
        follow=True,
    )
    assert "Category &#x27;hairy cell&#x27; added." in added.content.decode()
    admin.post(url, {"action": "critical", "label": "plasma cell", "critical": "1"})
    assert CellCategory.objects.get(lab=lab, label="plasma cell").critical
    assert AuditEvent.objects.filter(action=services.CATEGORY_ADDED).count() == 1
    assert AuditEvent.objects.filter(action=services.CATEGORY_CHANGED).count() == 1
    twice = admin.post(url, {"action": "add", "label": "blast", "group": "wbc"}, follow=True)
    assert "The vocabulary has &#x27;blast&#x27; already." in twice.content.decode()
    # A reviewer now has the new category, and a plasma cell makes the report critical.
    cells = list(Cell.objects.filter(image__batch=batch)[:2])
    review_cells(actor=people[Role.PATHOLOGIST], cells=[cells[0]], label="hairy cell")
    review_cells(actor=people[Role.PATHOLOGIST], cells=[cells[1]], label="plasma cell")
    report = batch.reports.get()
    rows = {row["label"]: row for row in report.differential}
    assert rows["hairy cell"]["loinc"] == "35058-7"
    assert report.critical
    # Only a lab admin changes the vocabulary.
    assert _client(people[Role.PATHOLOGIST]).get(url).status_code == 403


def test_the_gallery_offers_every_category_with_a_key(batch, people) -> None:
    page = _client(people[Role.STAFF]).get(reverse("cases:review", args=[batch.pk]))
    html = page.content.decode()
    assert 'data-label="blast" data-key="' in html
    assert 'data-label="not classed" data-key="0"' in html


def test_the_api_accepts_blast_one_cell_and_in_bulk(batch, people) -> None:
    api = APIClient()
    pathologist = people[Role.PATHOLOGIST]
    issued = issue_personal_token(user=pathologist, lab=batch.case.lab)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.plaintext}")
    cells = list(Cell.objects.filter(image__batch=batch).order_by("pk"))
    one = api.post(f"/api/v1/cells/{cells[0].pk}/reviews/", {"label": "blast"}, format="json")
    assert one.status_code == 201, one.content
    assert one.json()[0]["current_label"] == "blast"
    bulk = api.post(
        f"/api/v1/batches/{batch.pk}/reviews/",
        {"cells": [cells[1].pk, cells[2].pk], "label": "smudge cell"},
        format="json",
    )
    assert bulk.status_code == 201, bulk.content
    report = api.get(f"/api/v1/batches/{batch.pk}/report/").json()
    rows = {row["label"]: row for row in report["differential"]}
    assert report["critical"] is True
    assert (rows["blast"]["count"], rows["smudge cell"]["count"]) == (1, 2)
    assert rows["smudge cell"]["group"] == "per_100_wbc"


def test_adaptation_never_learns_a_category_the_model_lacks(batch, people, model_version):
    cells = list(Cell.objects.filter(image__batch=batch).order_by("pk"))
    review_cells(actor=people[Role.PATHOLOGIST], cells=cells[:2], label="blast")
    review_cells(actor=people[Role.PATHOLOGIST], cells=cells[2:3], label="neutrophil")
    found, skipped = reviewed_cells(lab=batch.case.lab, classes=model_version.classes)
    assert [cell.label for cell in found] == ["neutrophil"]
    assert skipped["of a category the model does not know (never taught to it)"] == 2
