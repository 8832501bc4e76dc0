"""The whole loop in headless Chromium with a real worker: upload, review, sign, PDF, amend,
patient history, and another lab that finds none of it.

Set SCREENSHOT_DIR to keep 1366x768 screenshots of the worklist, the review gallery, the
report and the patient's history (docs/screenshots/ holds the committed ones).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import LazySettings
from django.utils import timezone
from playwright.sync_api import Browser, Page, expect

from tests.conftest import noisy_jpeg_bytes
from tests.factories import (
    PASSWORD,
    BatchFactory,
    CaseFactory,
    MembershipFactory,
    ReportFactory,
    differential,
)
from tests.services import celery_worker
from webportal.accounts.models import Membership, Role
from webportal.audit.models import AuditEvent
from webportal.cases.models import Batch, Case, Cell, Image, ModelVersion, Patient
from webportal.celery import use_broker
from webportal.reports.models import Report

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

GOOD_FILES = 4


def _log_in(browser: Browser, base_url: str, membership: Membership) -> Page:
    page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", membership.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    return page


def _shot(page: Page, name: str) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def _earlier_visit(patient: Patient, model: ModelVersion) -> None:
    """The patient's previous visit, signed a month ago, to compare with."""
    case = CaseFactory.create(lab=patient.lab, patient=patient, accession_number="LOOP-0")
    batch = BatchFactory.create(case=case, model_version=model)
    Batch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(days=30))
    ReportFactory.create(
        batch=batch,
        status=Report.Status.FINAL,
        signed_at=timezone.now() - timedelta(days=30),
        differential=differential(lymphocyte=30, monocyte=10, neutrophil=60),
    )


def test_the_pathologists_loop_from_upload_to_amended_report_and_patient_history(
    browser: Browser,
    live_server,
    tiny_model: ModelVersion,
    tmp_path: Path,
    settings: LazySettings,
) -> None:
    # Every cell of the random tiny model falls under this threshold: all start unidentified.
    ModelVersion.objects.filter(pk=tiny_model.pk).update(threshold=0.999)
    staff = MembershipFactory.create(role=Role.STAFF)
    pathologist = MembershipFactory.create(lab=staff.lab, role=Role.PATHOLOGIST)
    stranger = MembershipFactory.create(role=Role.PATHOLOGIST)  # another lab
    base = live_server.url
    files = []
    for index in range(GOOD_FILES):
        path = tmp_path / f"cell-{index}.jpg"
        path.write_bytes(noisy_jpeg_bytes())
        files.append(str(path))
    bad = tmp_path / "scanner-log.jpg"
    bad.write_text("this is not an image")
    files.append(str(bad))

    broker = ("filesystem://", tmp_path / "broker")
    use_broker(*broker)
    try:
        with celery_worker(
            broker_url=broker[0], broker_folder=broker[1], log_path=tmp_path / "worker.log"
        ):
            # --- staff: a case, a batch with one bad file, the batch finishes --------------
            tech = _log_in(browser, base, staff)
            expect(tech).to_have_url(f"{base}/cases/")
            tech.click("summary:has-text('New case')")
            tech.fill("#id_accession_number", "LOOP-1")
            tech.fill("#id_patient_external_id", "MRN-LOOP")
            tech.click("button:has-text('Create case')")
            expect(tech.locator("h1")).to_have_text("Case LOOP-1")
            patient = Patient.objects.get(lab=staff.lab, external_id="MRN-LOOP")
            _earlier_visit(patient, tiny_model)
            tech.set_input_files("#id_images", files)
            tech.click("button:has-text('Upload and classify')")
            expect(tech.locator("#rejected")).to_contain_text("scanner-log.jpg")
            expect(tech.locator("#differential")).to_be_visible(timeout=90_000)
            expect(tech.locator("#batch-status")).to_have_text("Done")
    finally:
        use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)
    batch = Batch.objects.get(case__accession_number="LOOP-1")
    case = batch.case

    # --- the pathologist: worklist, keyboard reclassification, refused then signed ----------
    doc = _log_in(browser, base, pathologist)
    expect(doc).to_have_url(f"{base}/worklist/")
    row = doc.locator("#worklist tbody tr", has_text="LOOP-1")
    expect(row.locator(".count-unidentified")).to_have_text(str(GOOD_FILES))
    _shot(doc, "worklist")
    row.locator(f"a:has-text('Batch #{batch.pk}')").click()
    expect(doc).to_have_url(f"{base}/batches/{batch.pk}/")
    doc.goto(f"{base}/batches/{batch.pk}/review/")
    tiles = doc.locator("section.group[data-label='unidentified'] li.tile")
    expect(tiles).to_have_count(GOOD_FILES)
    tiles.nth(0).locator("button.pick").click()
    tiles.nth(GOOD_FILES - 2).locator("button.pick").click(modifiers=["Shift"])
    expect(doc.locator("#selection-count")).to_have_text(f"{GOOD_FILES - 1} cells selected")
    first_class = tiny_model.classes[0]
    doc.keyboard.press("1")
    expect(doc.locator("#review-status")).to_contain_text(f"{GOOD_FILES - 1} cells → {first_class}")
    expect(doc.locator(f"section.group[data-label='{first_class}'] li.tile")).to_have_count(
        GOOD_FILES - 1
    )
    _shot(doc, "review-gallery")

    report = Report.objects.get(batch=batch)
    doc.goto(f"{base}/reports/{report.pk}/")
    doc.click("button:has-text('Sign report')")
    expect(doc.locator(".errorlist").first).to_contain_text("unidentified")
    report.refresh_from_db()
    assert report.status == Report.Status.PRELIMINARY

    doc.goto(f"{base}/batches/{batch.pk}/review/")
    expect(tiles).to_have_count(1)
    doc.click("section.group[data-label='unidentified'] button.select-all")
    doc.keyboard.press("2")
    expect(tiles).to_have_count(0)
    doc.goto(f"{base}/reports/{report.pk}/")
    # Four cells, under the lab's minimum of 100 leukocytes: signed with a stated reason.
    doc.fill("#id_below_minimum_reason", "Four test images.")
    doc.click("button:has-text('Sign report')")
    expect(doc.locator("h1 .status")).to_contain_text("final")
    _shot(doc, "report")
    pdf = doc.context.request.get(f"{base}/reports/{report.pk}/pdf")
    assert pdf.status == 200
    assert pdf.body().startswith(b"%PDF")

    doc.fill("#id_reason", "Cell 1 rechecked at the microscope")
    doc.click("button:has-text('Amend report')")
    expect(doc.locator("h1 .status")).to_contain_text("amended")
    amended = Report.objects.get(batch=batch, status=Report.Status.AMENDED)
    assert amended.amendment_reason == "Cell 1 rechecked at the microscope"

    # --- the patient's page shows both visits side by side -----------------------------------
    doc.goto(f"{base}/patients/{patient.pk}/")
    expect(doc.locator("#differentials thead th")).to_contain_text(["Class", "LOOP-0", "LOOP-1"])
    expect(doc.locator("#visits tbody tr")).to_have_count(2)
    _shot(doc, "patient-history")

    # --- the audit trail has every step, with before and after -----------------------------
    actions = list(AuditEvent.objects.filter(lab=staff.lab).values_list("action", flat=True))
    for action in [
        "case.created",
        "batch.uploaded",
        "cell.reviewed",
        "report.signed",
        "report.downloaded",
        "report.amended",
    ]:
        assert action in actions, action

    # --- another lab finds none of it -------------------------------------------------------
    cells = Cell.objects.filter(image__batch=batch)
    images = Image.objects.filter(batch=batch)
    urls = [
        f"/cases/{case.pk}/",
        f"/batches/{batch.pk}/",
        f"/batches/{batch.pk}/status.json",
        f"/batches/{batch.pk}/review/",
        f"/reports/{report.pk}/",
        f"/reports/{amended.pk}/",
        f"/reports/{report.pk}/pdf",
        f"/reports/{amended.pk}/pdf",
        f"/patients/{patient.pk}/",
        *[f"/images/{image.pk}/" for image in images],
        *[f"/cells/{cell.pk}/" for cell in cells],
        *[f"/cells/{cell.pk}/crop.png" for cell in cells],
    ]
    other = _log_in(browser, base, stranger)
    statuses = {url: other.context.request.get(f"{base}{url}").status for url in urls}
    assert set(statuses.values()) == {404}, statuses
    other.goto(f"{base}/worklist/?queue=all")
    expect(other.locator("#worklist")).not_to_contain_text("LOOP-1")
    assert Case.objects.filter(lab=stranger.lab).count() == 0
