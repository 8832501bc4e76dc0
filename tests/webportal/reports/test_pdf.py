"""The PDF report: rendered for real and read back by text extraction."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from pypdf import PdfReader

from tests.factories import PatientFactory, classified_batch
from webportal.accounts.models import Role
from webportal.cases.models import Cell
from webportal.reports import services, wording
from webportal.reports.pdf import render_report_pdf
from webportal.reports.reviews import review_cells


def _text(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


@pytest.fixture
def signed(lab_case, model_version, people):
    lab_case.patient = PatientFactory.create(lab=lab_case.lab, external_id="MRN-884422")
    lab_case.save()
    batch = classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.9)] * 70 + [("lymphocyte", 0.9)] * 20
        + [("ig", 0.9)] * 3 + [("erythroblast", 0.9)] * 2 + [("monocyte", 0.1)],
    )  # fmt: skip
    pathologist = people[Role.PATHOLOGIST]
    pathologist.first_name, pathologist.last_name = "Ada", "Lovelace"
    pathologist.save()
    review_cells(
        actor=pathologist,
        cells=Cell.objects.filter(image__batch=batch, predictions__confidence__lt=0.5),
        label="monocyte",
    )
    return services.sign_report(
        actor=pathologist,
        report=batch.reports.get(),
        comment="Neutrophilia; correlate clinically.",
        morphology="Toxic granulation in neutrophils.",
        wbc_count=Decimal("11.3"),
        below_minimum_reason="Leukopenic film: every leukocyte on the slide was counted.",
    )


def test_the_pdf_names_the_case_counts_flags_signer_and_version(signed) -> None:
    text = _text(render_report_pdf(report=signed))
    case = signed.batch.case
    assert case.accession_number in text
    assert "MRN-884422" in text
    assert case.lab.name in text
    assert "version 1, FINAL" in text
    assert "Ada Lovelace" in text
    rows = {row["label"]: row for row in signed.differential}
    neutrophil = rows["neutrophil"]
    assert f"neutrophil {neutrophil['count']} {neutrophil['percent']:.1f}" in text
    assert f"{neutrophil['absolute']:.2f}" in text  # absolute count, x10^9/L
    assert "Leukocytes counted 94" in text
    assert "erythroblast 2 2.1 per 100 WBC" in text
    for flag in signed.flags:
        assert flag["message"] in text
    assert "Immature cells present" in text
    assert "Neutrophilia; correlate clinically." in text
    assert "Toxic granulation" in text
    assert signed.model_version.name in text
    assert " ".join(wording.decision_support(signed).split()) in text
    assert "verified by a qualified person" not in text  # 93 of 96 cells: the model's word
    assert "1 of 96 cells verified by a person; 95 accepted by the model" in text
    assert "Reason: Leukopenic film: every leukocyte on the slide was counted." in text


def test_an_amended_pdf_gives_the_reason_and_the_old_one_says_superseded(signed, people):
    amended = services.amend_report(
        actor=people[Role.PATHOLOGIST], report=signed, reason="Corrected patient's WBC count.",
        wbc_count=Decimal("9.8"),
    )  # fmt: skip
    signed.refresh_from_db()
    new_text = _text(render_report_pdf(report=amended))
    assert "version 2, AMENDED" in new_text
    assert "Corrected patient's WBC count." in new_text
    assert "9.80 x10^9/L" in new_text
    old_text = _text(render_report_pdf(report=signed))
    assert "SUPERSEDED by version 2" in old_text


def test_a_preliminary_pdf_says_it_is_not_verified(lab_case, model_version) -> None:
    batch = classified_batch(
        case=lab_case, model_version=model_version, predictions=[("neutrophil", 0.9)]
    )
    text = _text(render_report_pdf(report=batch.reports.get()))
    assert "PRELIMINARY: not yet verified" in text
    assert "Only 1 leukocyte counted" in text
