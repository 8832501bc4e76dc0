"""Issue 19, smaller things a pathologist met: the cell's drop-down starts with no class, a
relabel after signing says an amendment is needed, the sign refusal is shown once, the
threshold is printed rounded, and signing under the minimum on the page takes a reason."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import classified_batch
from webportal.accounts.models import Role
from webportal.cases.models import Cell
from webportal.reports import services
from webportal.reports.reviews import review_cells


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def batch(lab_case, model_version):
    model_version.threshold = 0.99387
    model_version.save()
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.999)] * 8 + [("lymphocyte", 0.999)] * 4
        + [("monocyte", 0.2)],
    )  # fmt: skip


def test_an_unreviewed_cells_drop_down_has_no_class_chosen(batch, people) -> None:
    cell = Cell.objects.filter(image__batch=batch).first()
    assert cell is not None
    client = _client(people[Role.STAFF])
    html = client.get(reverse("cases:cell", args=[cell.pk])).content.decode()
    assert '<option value="" selected>— choose a class —</option>' in html
    assert 'value="neutrophil" selected' not in html
    review_cells(actor=people[Role.STAFF], cells=[cell], label="band neutrophil")
    html = client.get(reverse("cases:cell", args=[cell.pk])).content.decode()
    assert '<option value="band neutrophil" selected>' in html


def test_the_threshold_is_printed_rounded(batch, people) -> None:
    report = batch.reports.get()
    page = _client(people[Role.PATHOLOGIST]).get(reverse("reports:report", args=[report.pk]))
    html = page.content.decode()
    assert "threshold 0.994" in html
    assert "0.99387" not in html


def test_the_sign_refusal_is_shown_once_and_a_reason_signs_below_the_minimum(batch, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    report = batch.reports.get()
    client = _client(pathologist)
    url = reverse("reports:edit", args=[report.pk])
    refused = client.post(url, {"sign": "1", "comment": "", "morphology": ""})
    html = refused.content.decode()
    assert refused.status_code == 400
    assert html.count("1 counted cell is still unidentified") == 1
    review_cells(
        actor=pathologist,
        cells=Cell.objects.filter(image__batch=batch, predictions__confidence__lt=0.5),
        label="monocyte",
    )
    refused = client.post(url, {"sign": "1", "comment": "", "morphology": ""})
    html = refused.content.decode()
    assert html.count("13 leukocytes counted, under the lab&#x27;s minimum of 100") == 1
    assert 'name="below_minimum_reason"' in html
    signed = client.post(
        url,
        {"sign": "1", "comment": "", "morphology": "",
         "below_minimum_reason": "Paediatric sample, 13 cells on the film."},
        follow=True,
    )  # fmt: skip
    html = signed.content.decode()
    assert "Report v1 signed." in html
    assert "Reason: Paediatric sample, 13 cells on the film." in html


def test_relabelling_after_signing_says_an_amendment_is_needed(batch, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    cells = Cell.objects.filter(image__batch=batch)
    review_cells(actor=pathologist, cells=cells.filter(predictions__confidence__lt=0.5),
                 label="monocyte")  # fmt: skip
    services.sign_report(actor=pathologist, report=batch.reports.get(), below_minimum_reason="x")
    client = _client(pathologist)
    answer = client.post(
        reverse("cases:reclassify", args=[batch.pk]),
        data=json.dumps({"cells": [cells.first().pk], "label": "blast"}),  # type: ignore[union-attr]
        content_type="application/json",
    )
    assert answer.status_code == 200
    assert "Amend the report" in answer.json()["hint"]
    cell = cells.last()
    assert cell is not None
    page = client.post(reverse("cases:cell", args=[cell.pk]), {"label": "lymphocyte"}, follow=True)
    assert "Amend the report to issue it" in page.content.decode()
