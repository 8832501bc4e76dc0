"""Issue 19 in headless Chromium: a pathologist finds a blast in the gallery (its key), the
report turns critical (banner, first on the worklist), signing under the lab's minimum is
refused once and then done with a stated reason, and the signed PDF says all of it.

Set SCREENSHOT_DIR to keep 1366x768 screenshots of the critical report page and of the PDF's
pages (pdftoppm, 100 dpi); docs/screenshots/ holds the committed ones.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from pypdf import PdfReader

from tests.factories import (
    PASSWORD,
    PBC_CLASSES,
    CaseFactory,
    MembershipFactory,
    ModelVersionFactory,
    PatientFactory,
    classified_batch,
)
from webportal.accounts.models import Membership, Role
from webportal.audit.models import AuditEvent
from webportal.reports.models import Report

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _log_in(browser: Browser, base_url: str, membership: Membership) -> Page:
    page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", membership.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    return page


def _shot_folder() -> Path | None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


def _shot(page: Page, name: str, *, full_page: bool = False) -> None:
    folder = _shot_folder()
    if folder:
        page.screenshot(path=str(folder / f"{name}.png"), full_page=full_page)


def test_a_blast_makes_a_critical_report_signed_under_the_minimum_with_its_reason(
    browser: Browser, live_server, tmp_path: Path
) -> None:
    pathologist = MembershipFactory.create(role=Role.PATHOLOGIST)
    pathologist.user.first_name, pathologist.user.last_name = "Rosalind", "Franklin"
    pathologist.user.save()
    lab = pathologist.lab
    model = ModelVersionFactory.create(name="pbc8-mobilenetv2", classes=PBC_CLASSES,
                                       threshold=0.99387)  # fmt: skip
    routine = classified_batch(
        case=CaseFactory.create(lab=lab, accession_number="CRIT-0"),
        model_version=model,
        predictions=[("neutrophil", 0.999)] * 5,
    )
    case = CaseFactory.create(
        lab=lab, accession_number="CRIT-1",
        patient=PatientFactory.create(lab=lab, external_id="MRN-7731"),
    )  # fmt: skip
    # 40 leukocytes the model is sure of, 3 cells it is not: the reviewer looks at those.
    batch = classified_batch(
        case=case,
        model_version=model,
        predictions=[("neutrophil", 0.999)] * 22 + [("lymphocyte", 0.999)] * 13
        + [("monocyte", 0.999)] * 4 + [("basophil", 0.999)] + [("lymphocyte", 0.4)] * 3,
    )  # fmt: skip
    base = live_server.url
    doc = _log_in(browser, base, pathologist)

    # The gallery: the three unidentified cells are blasts (key 9: the first category after
    # the model's eight classes).
    doc.goto(f"{base}/batches/{batch.pk}/review/")
    expect(doc.locator("button.choice[data-label='blast'] kbd")).to_have_text("9")
    doc.click("section.group[data-label='unidentified'] button.select-all")
    doc.keyboard.press("9")
    expect(doc.locator("#review-status")).to_contain_text("3 cells → blast")
    expect(doc.locator("#live-differential .flags")).to_contain_text("CRITICAL RESULT: blast 3")
    _shot(doc, "review-blast")

    # First on the worklist, ahead of the older routine batch.
    doc.goto(f"{base}/worklist/")
    first = doc.locator("#worklist tbody tr").first
    expect(first).to_contain_text("CRIT-1")
    expect(first.locator(".critical-mark")).to_have_text("CRITICAL")
    _shot(doc, "worklist-critical")
    assert routine.pk != batch.pk

    # The report: the banner, the intervals; signing is refused once under the minimum.
    report = Report.objects.get(batch=batch)
    doc.goto(f"{base}/reports/{report.pk}/")
    expect(doc.locator("#critical")).to_contain_text("CRITICAL RESULT")
    blast_row = doc.locator(".differential-table tr[data-label='blast']")
    expect(blast_row.locator("td.percent")).to_have_text("7.0")
    expect(blast_row.locator("td.ci")).to_have_text("1.5\u201319.1")
    doc.click("button:has-text('Sign report')")
    expect(doc.locator(".errorlist")).to_have_count(1)
    expect(doc.locator(".errorlist")).to_contain_text("43 leukocytes counted, under the lab's")
    _shot(doc, "report-below-minimum", full_page=True)
    report.refresh_from_db()
    assert report.status == Report.Status.PRELIMINARY
    doc.fill("#id_below_minimum_reason", "Leukopenia: 43 leukocytes on the whole film.")
    doc.click("button:has-text('Sign report')")
    expect(doc.locator("h1 .status")).to_contain_text("final")
    expect(doc.locator("#below-minimum")).to_contain_text("Leukopenia: 43 leukocytes")
    expect(doc.locator("#verification")).to_contain_text("3 of 43 cells verified by a person")
    expect(doc.locator("#decision-support")).not_to_contain_text("qualified person")
    _shot(doc, "report-critical")
    _shot(doc, "report-critical-full", full_page=True)
    folder = _shot_folder()

    pdf = doc.context.request.get(f"{base}/reports/{report.pk}/pdf")
    assert pdf.status == 200
    text = " ".join(
        " ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf.body())).pages
    )
    assert "CRITICAL RESULT: blast 3 (7.0% of leukocytes)." in text
    assert "blast (CRITICAL) 3 7.0 1.5-19.1" in text
    assert "Reason: Leukopenia: 43 leukocytes on the whole film." in text
    assert "3 of 43 cells verified by a person; 40 accepted by the model" in text
    assert "(threshold 0.994)" in text
    if folder and shutil.which("pdftoppm"):
        pdf_path = tmp_path / "report.pdf"
        pdf_path.write_bytes(pdf.body())
        subprocess.run(
            ["pdftoppm", "-png", "-r", "100", str(pdf_path), str(folder / "report-critical-pdf")],
            check=True,
        )
    # The cell page of a reviewed blast: its class chosen in the drop-down.
    cell = batch.images.last().cells.get()  # type: ignore[union-attr]
    doc.goto(f"{base}/cells/{cell.pk}/")
    expect(doc.locator("#id_label option:checked")).to_have_text("blast")
    _shot(doc, "cell-blast")

    # The lab admin's vocabulary page.
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN)
    page = _log_in(browser, base, admin)
    page.goto(f"{base}/lab/{lab.pk}/vocabulary/")
    expect(page.locator("#vocabulary tr[data-label='blast']")).to_contain_text("26446-5")
    page.fill("#id_label", "hairy cell")
    page.fill("#id_loinc", "35058-7")
    page.click("button:has-text('Add the category')")
    expect(page.locator("#vocabulary tr[data-label='hairy cell']")).to_contain_text("35058-7")
    _shot(page, "lab-vocabulary", full_page=True)

    signed = AuditEvent.objects.get(action="report.signed", object_id=str(report.pk))
    assert signed.after is not None
    assert signed.after["critical"] is True
    assert signed.after["below_minimum_reason"].startswith("Leukopenia")
