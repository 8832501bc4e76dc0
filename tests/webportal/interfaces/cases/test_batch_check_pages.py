"""What the lab reads about the batch guard: the batch, review, cell and report pages and the
PDF say why a flagged batch auto-accepted nothing; a model without a guard never breaks them."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse
from pypdf import PdfReader

from tests.factories import classified_batch
from webportal.accounts.models import Role
from webportal.cases import batch_check
from webportal.cases.models import Batch, Cell
from webportal.reports.pdf import render_report_pdf


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


@pytest.fixture
def flagged(lab_case, model_version):
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.99)] * 4 + [("lymphocyte", 0.97)] * 2,
        ood_check=Batch.Check.FLAGGED,
        ood_score=6.137,
        ood_threshold=3.168,
        ood_threshold_size=20,
        ood_cells_checked=20,
    )


def test_the_batch_page_says_why_nothing_was_auto_accepted(flagged, people) -> None:
    page = _client(people[Role.STAFF]).get(reverse("cases:batch_detail", args=[flagged.pk]))
    html = page.content.decode()
    assert batch_check.HEADLINE in html
    assert "6.14" in html
    assert "3.17" in html
    assert "batches of 20" in html
    # Every confident cell is unidentified, and its caption gives the batch, not the threshold.
    assert html.count("batch flagged") == 6
    assert "&lt; 50.0%" not in html


def test_the_worklist_marks_a_flagged_batch(flagged, people) -> None:
    page = _client(people[Role.PATHOLOGIST]).get(reverse("worklist:worklist")).content.decode()
    assert f"Batch #{flagged.pk}" in page
    assert "unlike the validation images" in page


def test_the_review_and_cell_pages_say_the_batch_was_flagged(flagged, people) -> None:
    client = _client(people[Role.PATHOLOGIST])
    review = client.get(reverse("cases:review", args=[flagged.pk])).content.decode()
    assert "unlike anything this model was validated on" in review
    cell = Cell.objects.filter(image__batch=flagged).first()
    assert cell is not None
    page = client.get(reverse("cases:cell", args=[cell.pk])).content.decode()
    assert "not accepted automatically" in page
    assert "below, so unidentified" not in page


def test_the_report_page_and_pdf_say_why_with_the_score_and_limit(flagged, people) -> None:
    report = flagged.reports.get()
    html = _client(people[Role.PATHOLOGIST]).get(reverse("reports:report", args=[report.pk]))
    text = html.content.decode()
    assert batch_check.HEADLINE in text
    assert "Batch check" in text
    assert "score 6.14, limit 3.17" in text
    pdf = _pdf_text(render_report_pdf(report=report))
    assert batch_check.HEADLINE.upper() in pdf
    assert "Unlike the validation images (score 6.14, limit 3.17)" in pdf
    assert "no cell was accepted automatically" in pdf  # the flag, in the flags section


@pytest.mark.parametrize("check", [Batch.Check.NO_GUARD, Batch.Check.NOT_CHECKED])
def test_a_batch_without_a_verdict_reads_as_before(lab_case, model_version, people, check) -> None:
    batch = classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.99), ("lymphocyte", 0.2)],
        ood_check=check,
    )
    report = batch.reports.get()
    client = _client(people[Role.PATHOLOGIST])
    page = client.get(reverse("cases:batch_detail", args=[batch.pk])).content.decode()
    report_page = client.get(reverse("reports:report", args=[report.pk])).content.decode()
    pdf = _pdf_text(render_report_pdf(report=report))

    assert batch_check.HEADLINE not in page + report_page + pdf
    assert "&lt; 50.0%" in page  # the low cell is below the threshold, as before
    assert report.flags[0]["code"] != batch_check.FLAG_CODE
    if check == Batch.Check.NO_GUARD:
        assert "batch check: no batch check" in page
        assert "No batch check (the model has none)" in pdf
    else:
        assert "batch check" not in page.lower()
        assert "Batch check" not in pdf
