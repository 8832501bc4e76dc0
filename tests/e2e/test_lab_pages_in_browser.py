"""The worklist, a patient's history and the agreement page as a lab sees them, in Chromium.

With SCREENSHOT_DIR set the 1366x768 screenshots land there (docs/screenshots/ holds the
committed ones: `SCREENSHOT_DIR=docs/screenshots pytest tests/e2e/test_lab_pages_in_browser.py`).
"""

from __future__ import annotations

import os
import random
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from tests.factories import (
    PASSWORD,
    BatchFactory,
    CaseFactory,
    LabFactory,
    MembershipFactory,
    ModelVersionFactory,
    PatientFactory,
    ReportFactory,
    differential,
)
from webportal.accounts.models import Membership, Role
from webportal.cases.models import Batch, Cell, Image, ModelVersion, Prediction, Review
from webportal.reports.models import Report

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CLASSES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]
VISITS = [  # days ago, counts per class, signed
    (62, {"eosinophil": 3, "lymphocyte": 31, "monocyte": 6, "neutrophil": 59, "basophil": 1}),
    (21, {"eosinophil": 2, "lymphocyte": 22, "monocyte": 7, "neutrophil": 63, "ig": 4}),
    (3, {"eosinophil": 1, "lymphocyte": 14, "monocyte": 5, "neutrophil": 66, "ig": 9}),
]


def _save(page: Page, name: str) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def _lab() -> tuple[Membership, Membership, ModelVersion, int]:
    lab = LabFactory.create(name="St Elsewhere Haematology")
    pathologist = MembershipFactory.create(lab=lab, role=Role.PATHOLOGIST, user__username="dr.ng")
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN, user__username="qm.kim")
    model = ModelVersionFactory.create(name="pbc8-mobilenetv2", classes=CLASSES)
    patient = PatientFactory.create(lab=lab, external_id="MRN-004211")
    for number, (days, counts) in enumerate(VISITS):
        case = CaseFactory.create(lab=lab, patient=patient, accession_number=f"H26-{1040 + number}")
        batch = BatchFactory.create(case=case, model_version=model)
        Batch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(days=days))
        ReportFactory.create(
            batch=batch,
            status=Report.Status.FINAL,
            signed_by=pathologist.user,
            signed_at=timezone.now() - timedelta(days=days),
            differential=differential(**{label: counts.get(label, 0) for label in CLASSES}),
        )
    # Today's work: batches waiting for review, STAT ones among them, and the running queue.
    for hours, priority, unidentified in [(5, "routine", 3), (2, "stat", 12), (7, "routine", 0),
                                          (1, "stat", 4), (9, "routine", 21)]:  # fmt: skip
        case = CaseFactory.create(lab=lab, patient=PatientFactory.create(lab=lab))
        batch = BatchFactory.create(case=case, model_version=model, priority=priority)
        Batch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(hours=hours))
        ReportFactory.create(
            batch=batch,
            differential=differential(
                lymphocyte=28, monocyte=6, neutrophil=61, eosinophil=2, unidentified=unidentified
            ),
        )
    for status, processed in [("processing", 140), ("queued", 0), ("failed", 0)]:
        BatchFactory.create(
            case=CaseFactory.create(lab=lab),
            model_version=model,
            status=status,
            total_images=400,
            processed_images=processed,
            error="No file in the upload was an acceptable image." if status == "failed" else "",
        )
    return pathologist, admin, model, patient.pk


def _reviewed_cells(pathologist: Membership, model: ModelVersion) -> None:
    """Signed batches whose cells the reviewers mostly kept: material for the agreement page."""
    chance = random.Random(7)
    for batch in Batch.objects.filter(case__lab=pathologist.lab, reports__status="final"):
        for index in range(150):
            image = Image.objects.create(
                batch=batch, original_name=f"{index}.png", status=Image.Status.OK
            )
            cell = Cell.objects.create(image=image)
            label = chance.choice(CLASSES)
            Prediction.objects.create(
                cell=cell, model_version=model, label=label, confidence=0.9, probabilities={}
            )
            roll = chance.random()
            if roll < 0.25:
                reviewed = label if roll < 0.15 else chance.choice([*CLASSES, "not classed"])
                Review.objects.create(
                    cell=cell,
                    reviewer=pathologist.user,
                    reviewer_role="pathologist",
                    label=reviewed,
                )


def _log_in(page: Page, base: str, membership: Membership) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", membership.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")


def test_the_worklist_patient_history_and_agreement_pages_render_without_errors(
    page: Page, console_errors: list[str], live_server
) -> None:
    pathologist, admin, model, patient_id = _lab()
    _reviewed_cells(pathologist, model)
    base = live_server.url

    _log_in(page, base, pathologist)
    expect(page).to_have_url(f"{base}/worklist/")
    rows = page.locator("#worklist tbody tr")
    expect(rows).to_have_count(5)
    expect(rows.first.locator("td").first).to_have_text("STAT")
    expect(page.locator("#queue tbody tr")).to_have_count(3)
    _save(page, "worklist")

    page.goto(f"{base}/patients/{patient_id}/")
    expect(page.locator("#differentials thead th")).to_have_count(len(VISITS) + 2)
    expect(page.locator(".multiples figure").first).to_be_visible()
    _save(page, "patient-history")

    page.goto(f"{base}/quality/")
    expect(page.locator("#summary")).to_contain_text("Cohen's kappa")
    expect(page.locator("#matrix tbody tr")).to_have_count(len(CLASSES))
    _save(page, "agreement")
    assert console_errors == []

    page.context.clear_cookies()
    _log_in(page, base, admin)
    page.goto(f"{base}/lab/{admin.lab.pk}/audit/")
    expect(page.locator("h1")).to_contain_text("audit trail")
    assert console_errors == []
