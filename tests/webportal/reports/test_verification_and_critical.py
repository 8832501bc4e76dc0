"""Issue 19: verification that is true, critical results, and one number everywhere (the page,
the PDF, the JSON and FHIR show the same digits)."""

from __future__ import annotations

import io
import re
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from pypdf import PdfReader

from tests.factories import CaseFactory, allow_small_counts, classified_batch
from tests.webportal.conftest import bearer
from webportal.accounts.models import Role
from webportal.api import tokens
from webportal.api.models import WebhookDelivery
from webportal.cases.models import Cell, Review
from webportal.cases.services import ServiceError
from webportal.notifications import webhooks
from webportal.reports import fhir, services, wording
from webportal.reports.pdf import render_report_pdf
from webportal.reports.reviews import review_cells
from webportal.worklist.selectors import WorklistFilters, worklist


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _pdf_text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


@pytest.fixture
def batch(lab_case, model_version):
    allow_small_counts(lab_case.lab)
    # 11 neutrophils, 13 lymphocytes, 3 monocytes: 40.74, 48.15, 11.11 % (the issue's 27).
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.9)] * 11 + [("lymphocyte", 0.9)] * 13
        + [("monocyte", 0.9)] * 3,
    )  # fmt: skip


def test_auto_accepted_cells_are_not_called_verified(batch, people) -> None:
    signed = services.sign_report(actor=people[Role.PATHOLOGIST], report=batch.reports.get())
    assert (signed.person_verified_cells, signed.model_accepted_cells) == (0, 27)
    assert not signed.fully_verified
    statement = wording.decision_support(signed)
    assert "verified by a qualified person" not in statement
    assert "0 of 27 cells were verified by a person and 27 were accepted" in statement
    line = wording.verification_line(signed)
    assert "0 of 27 cells verified by a person; 27 accepted by the model" in line
    assert signed.model_version.name in line
    assert "verified by a qualified person" not in _pdf_text(render_report_pdf(report=signed))


def test_every_cell_reviewed_by_a_person_is_verified_and_says_so(batch, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    for label in ["neutrophil", "lymphocyte", "monocyte"]:
        cells = Cell.objects.filter(image__batch=batch, predictions__label=label)
        review_cells(actor=pathologist, cells=cells, label=label)
    signed = services.sign_report(actor=pathologist, report=batch.reports.get())
    assert (signed.person_verified_cells, signed.model_accepted_cells) == (27, 0)
    assert "every cell was verified by a qualified person" in wording.decision_support(signed)
    text = _pdf_text(render_report_pdf(report=signed))
    assert "every cell was verified by a qualified person" in text


def test_a_machine_accounts_review_is_not_a_persons_verification(batch, people) -> None:
    cells = list(Cell.objects.filter(image__batch=batch)[:4])
    # However it came to be written (issue 21 refuses it now), an integrator's review is
    # counted as nobody's verification.
    Review.objects.bulk_create(
        Review(cell=cell, reviewer=people[Role.INTEGRATOR], reviewer_role=Role.INTEGRATOR,
               label="monocyte")
        for cell in cells
    )  # fmt: skip
    report = services.refresh_preliminary_report(batch=batch)
    assert report is not None
    assert (report.person_verified_cells, report.model_accepted_cells) == (0, 23)
    assert "4 labelled by a machine account, not verified by a person" in (
        wording.verification_line(report)
    )


def test_the_lab_may_ask_for_every_cell_verified_before_signing(batch, people) -> None:
    lab = batch.case.lab
    services.set_policy(actor=people[Role.ADMIN], lab=lab, min_leukocytes=1,
                        every_cell_verified=True)  # fmt: skip
    pathologist = people[Role.PATHOLOGIST]
    with pytest.raises(ServiceError, match="27 cells were not"):
        services.sign_report(actor=pathologist, report=batch.reports.get())
    review_cells(actor=pathologist, cells=Cell.objects.filter(image__batch=batch)[:26],
                 label="neutrophil")  # fmt: skip
    with pytest.raises(ServiceError, match="1 cell was not"):
        services.sign_report(actor=pathologist, report=batch.reports.get())
    review_cells(actor=pathologist, cells=Cell.objects.filter(image__batch=batch)[26:],
                 label="lymphocyte")  # fmt: skip
    assert services.sign_report(actor=pathologist, report=batch.reports.get()).fully_verified


def test_a_blast_puts_the_report_first_on_the_worklist_with_a_banner_and_a_webhook(
    batch, people, model_version, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    lab = batch.case.lab
    monkeypatch.setattr(webhooks, "_send", lambda delivery_id, countdown=0: None)
    webhooks.register_endpoint(lab=lab, url="https://lis.example/hook")
    # An older, routine batch without blasts would otherwise come first.
    other = classified_batch(
        case=CaseFactory.create(lab=lab), model_version=model_version,
        predictions=[("neutrophil", 0.9)] * 3,
    )  # fmt: skip
    pathologist = people[Role.PATHOLOGIST]
    order = [b.pk for b in worklist(user=pathologist, filters=WorklistFilters())]
    assert order.index(batch.pk) < order.index(other.pk)  # oldest first
    cells = Cell.objects.filter(image__batch=other)[:1]
    with django_capture_on_commit_callbacks(execute=True):
        review_cells(actor=pathologist, cells=cells, label="blast")
    order = [b.pk for b in worklist(user=pathologist, filters=WorklistFilters())]
    assert order[0] == other.pk
    critical = WebhookDelivery.objects.get(event="report.critical")
    assert critical.payload["data"]["report"]["critical"] is True
    assert "blast 1" in critical.payload["data"]["report"]["critical_results"][0]
    # Reviewing again does not send it twice; signing sends it with the final status.
    with django_capture_on_commit_callbacks(execute=True):
        review_cells(actor=pathologist, cells=Cell.objects.filter(image__batch=other)[1:2],
                     label="neutrophil")  # fmt: skip
        services.sign_report(actor=pathologist, report=other.reports.get())
    deliveries = WebhookDelivery.objects.filter(event="report.critical").order_by("id")
    statuses = [d.payload["data"]["report"]["status"] for d in deliveries]
    assert statuses == ["preliminary", "final"]

    report = other.reports.get()
    page = _client(pathologist).get(reverse("reports:report", args=[report.pk])).content.decode()
    assert 'id="critical"' in page
    assert "CRITICAL RESULT" in page
    assert "CRITICAL RESULT: blast 1" in _pdf_text(render_report_pdf(report=report))
    bundle = fhir.report_bundle(report=report)
    (body,) = fhir.resources_of(bundle, "DiagnosticReport")
    assert body["conclusion"].startswith("CRITICAL RESULT: blast 1")
    blast = next(
        o for o in fhir.resources_of(bundle, "Observation") if o["id"].endswith("percent-blast")
    )
    assert blast["interpretation"][0]["coding"][0]["code"] == "AA"
    assert blast["code"]["coding"][0]["code"] == "26446-5"


def test_one_number_everywhere_page_pdf_json_and_fhir(batch, people) -> None:
    lab = batch.case.lab
    pathologist = people[Role.PATHOLOGIST]
    report = services.update_preliminary_report(
        actor=pathologist, report=batch.reports.get(), comment="", morphology="",
        wbc_count=Decimal("7.30"),
    )  # fmt: skip
    expected = {"neutrophil": ("40.7", "2.97"), "lymphocyte": ("48.1", "3.51"),
                "monocyte": ("11.1", "0.81")}  # fmt: skip
    page = _client(pathologist).get(reverse("reports:report", args=[report.pk])).content.decode()
    pdf = _pdf_text(render_report_pdf(report=report))
    issued = tokens.issue_token(lab=lab, username="lis")
    api = bearer(issued.plaintext)
    body = api.get(f"/api/v1/batches/{batch.pk}/report/").json()
    rows = {row["label"]: row for row in body["differential"]}
    observations = {
        o["id"].split("-", 2)[2]: o
        for o in fhir.resources_of(fhir.report_bundle(report=report), "Observation")
    }
    for label, (percent, absolute) in expected.items():
        assert re.search(rf'data-label="{label}".*?class="num percent">{percent}\b', page, re.S)
        assert f"{label} {rows[label]['count']} {percent} " in pdf
        assert f"{rows[label]['percent']:.1f}" == percent
        assert f"{rows[label]['absolute']:.2f}" == absolute
        assert absolute in pdf
        assert f"{observations[f'percent-{label}']['valueQuantity']['value']:.1f}" == percent
        assert f"{observations[f'absolute-{label}']['valueQuantity']['value']:.2f}" == absolute
    # The monocytes' interval, and the total that is not forced to 100.0.
    assert (rows["monocyte"]["ci_low"], rows["monocyte"]["ci_high"]) == (2.4, 29.2)
    assert "2.4\u201329.2" in page  # an en dash
    assert "2.4-29.2" in pdf
    assert report.percent_total == 99.9
    assert "Leukocytes counted 27 99.9" in pdf
    assert wording.ROUNDING_NOTE.split(",")[0] in page


def test_a_version_written_before_verification_was_counted_never_reads_verified(
    lab_case, model_version, people
) -> None:
    from django.utils import timezone

    from tests.factories import ReportFactory
    from webportal.cases.models import Batch

    report = ReportFactory.create(
        batch=Batch.objects.create(case=lab_case, model_version=model_version),
        status="final",
        signed_at=timezone.now(),
        signed_by=people[Role.PATHOLOGIST],
    )
    assert report.person_verified_cells is None
    assert not report.fully_verified
    assert wording.verification_line(report).startswith("Not recorded")
    assert "qualified person" not in wording.decision_support(report)
    page = _client(people[Role.PATHOLOGIST]).get(reverse("reports:report", args=[report.pk]))
    assert "Not recorded" in page.content.decode()
