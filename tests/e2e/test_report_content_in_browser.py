"""What a signed report carries (ISO 15189:2022, 7.4.1.6), in headless Chromium: the lab, the
patient's two identifiers, sex and age, the specimen, the requester, the signer's name and
title, absolute counts with their ranges, the NRBC-corrected WBC; then an amendment made in
the browser that shows what changed and when the replaced version was issued.

With SCREENSHOT_DIR set the 1366x768 screenshots and both PDFs land there (docs/screenshots/
holds the committed ones, the PDF pages made with pdftoppm: see docs/REPORTS.md).
"""

from __future__ import annotations

import io
import os
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect
from pypdf import PdfReader

from tests.factories import PASSWORD, MembershipFactory, ModelVersionFactory, classified_batch
from webportal.accounts.models import Membership, Role
from webportal.accounts.services import update_lab_details, update_person
from webportal.cases.models import Cell
from webportal.cases.services import PatientDetails, SpecimenDetails, create_case
from webportal.reports import services
from webportal.reports.models import Report
from webportal.reports.reviews import review_cells

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CLASSES = ["basophil", "eosinophil", "erythroblast", "lymphocyte", "monocyte", "neutrophil"]


def _log_in(browser: Browser, base_url: str, membership: Membership) -> Page:
    page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", membership.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    return page


def _keep(page: Page, name: str, pdf: bytes | None = None) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))
        if pdf is not None:
            (Path(folder) / f"{name}.pdf").write_bytes(pdf)


def _pages(pdf: bytes) -> list[str]:
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages]


def _signed_report(lab_admin: Membership, pathologist: Membership) -> Report:
    lab = lab_admin.lab
    update_lab_details(
        admin=lab_admin.user,
        lab=lab,
        address="Department of Haematology\n1 Infirmary Road, Oxford OX3 9DU",
        accreditation="UKAS 8123",
        director="Dr Grace Hopper, FRCPath",
    )
    update_person(
        admin=lab_admin.user,
        membership=pathologist,
        first_name="Ada",
        last_name="Lovelace",
        title="Consultant haematologist",
    )
    collected = timezone.now() - timedelta(hours=3)
    case = create_case(
        lab=lab,
        created_by=None,
        accession_number="H26-004711",
        patient=PatientDetails(
            identifier="MRN-884422",
            family_name="Doe",
            given_name="Jane",
            birth_date=date(1961, 4, 12),
            sex="female",
        ),
        specimen=SpecimenDetails(
            type="Venous blood, EDTA",
            collected_at=collected,
            received_at=collected + timedelta(minutes=52),
        ),
        requester="Dr R. Osler, Haematology clinic",
    )
    model = ModelVersionFactory.create(classes=CLASSES, threshold=0.5, name="wbc-mobilenetv2")
    batch = classified_batch(
        case=case,
        model_version=model,
        predictions=[("neutrophil", 0.9)] * 62 + [("lymphocyte", 0.9)] * 25
        + [("monocyte", 0.9)] * 8 + [("eosinophil", 0.9)] * 4 + [("basophil", 0.9)]
        + [("erythroblast", 0.9)] * 5,
    )  # fmt: skip
    return services.sign_report(
        actor=pathologist.user, report=batch.reports.get(), wbc_count=Decimal("11.3")
    )


def test_a_signed_report_carries_its_content_and_an_amendment_shows_what_changed(
    browser: Browser, live_server
) -> None:
    lab_admin = MembershipFactory.create(role=Role.ADMIN)
    pathologist = MembershipFactory.create(lab=lab_admin.lab, role=Role.PATHOLOGIST)
    final = _signed_report(lab_admin, pathologist)
    base = live_server.url

    doc = _log_in(browser, base, pathologist)
    doc.goto(f"{base}/reports/{final.pk}/")
    header = doc.locator("#report-header")
    for text in [
        "1 Infirmary Road",
        "UKAS 8123",
        "Dr Grace Hopper",
        "MRN-884422",
        "DOE, Jane",
        "1961-04-12",
        "Female",
        "Venous blood, EDTA",
        "Dr R. Osler",
        "Ada Lovelace, Consultant haematologist",
        "corrected for NRBC 10.76",
    ]:
        expect(header).to_contain_text(text)
    neutrophils = doc.locator("tr[data-label='neutrophil']")
    # 62 of 100 leukocytes of 10.76 x10^9/L (11.3 corrected for 5 NRBC per 100 WBC): 6.67.
    expect(neutrophils.locator("td.absolute")).to_have_text("6.67")
    expect(neutrophils).to_contain_text("2\u20137")
    expect(doc.locator(".end-of-report")).to_contain_text("End of report")
    final_pdf = doc.context.request.get(f"{base}/reports/{final.pk}/pdf").body()
    _keep(doc, "report-final", final_pdf)

    # Two neutrophils were monocytes after all: relabelled, then amended in the browser.
    review_cells(
        actor=pathologist.user,
        cells=Cell.objects.filter(
            image__batch=final.batch, predictions__label="neutrophil"
        ).order_by("pk")[:2],
        label="monocyte",
    )
    doc.goto(f"{base}/reports/{final.pk}/")
    doc.fill("#id_reason", "Two monocytes had been counted as neutrophils")
    doc.click("button:has-text('Amend report')")
    expect(doc.locator("h1 .status")).to_contain_text("amended")
    changes = doc.locator("#amendment")
    issued = timezone.localtime(Report.objects.get(pk=final.pk).signed_at).strftime(
        "%Y-%m-%d %H:%M"
    )
    expect(changes).to_contain_text(f"Replaces version 1, issued {issued}")
    expect(changes.locator("tr[data-what='neutrophil']")).to_contain_text("62 (62.0%)")
    expect(changes.locator("tr[data-what='neutrophil']")).to_contain_text("60 (60.0%)")
    expect(changes.locator("tr[data-what='monocyte']")).to_contain_text("10 (10.0%)")
    amended = Report.objects.get(batch=final.batch, status=Report.Status.AMENDED)
    amended_pdf = doc.context.request.get(f"{base}/reports/{amended.pk}/pdf").body()
    _keep(doc, "report-amended", amended_pdf)

    for pdf in (final_pdf, amended_pdf):
        pages = _pages(pdf)
        for number, text in enumerate(pages, start=1):
            # Two identifiers on every page, and page x of y.
            assert "Patient MRN-884422 · DOE, Jane · born 1961-04-12" in text
            assert f"page {number} of {len(pages)}" in text
        assert "End of report" in pages[-1]
    amended_text = " ".join(_pages(amended_pdf))
    assert "AMENDED REPORT: replaces version 1, issued" in amended_text
    assert "62 (62.0%) 60 (60.0%)" in amended_text
