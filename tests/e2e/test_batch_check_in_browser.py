"""A batch the batch guard flagged, as a lab user sees it in headless Chromium: the batch page
and the report say why nothing was auto-accepted, under the Content-Security-Policy.

With SCREENSHOT_DIR set the 1366x768 screenshots land there (docs/screenshots/ holds the
committed ones: `SCREENSHOT_DIR=docs/screenshots pytest tests/e2e/test_batch_check_in_browser.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import cell_pngs
from tests.factories import PASSWORD, CaseFactory, MembershipFactory, PatientFactory
from webportal.accounts.models import Role
from webportal.cases import batch_check, services
from webportal.cases.models import Batch, ModelVersion
from webportal.pipeline import batch_job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _shot(page: Page, name: str) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))


def test_a_flagged_batch_says_why_on_its_page_and_its_report(
    page: Page, console_errors: list[str], live_server, guarded_model: ModelVersion
) -> None:
    ModelVersion.objects.filter(pk=guarded_model.pk).update(name="wbc-demo (guarded)")
    pathologist = MembershipFactory.create(role=Role.PATHOLOGIST)
    case = CaseFactory.create(
        lab=pathologist.lab,
        accession_number="H26-04117",
        patient=PatientFactory.create(lab=pathologist.lab, external_id="MRN-552019"),
    )
    # Another lab's smear: a different camera and stain than the model was validated on.
    batch = services.submit_batch(
        case=case, created_by=None, files=cell_pngs(20, seed=4, shifted=True, prefix="scope2")
    )
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.ood_check == Batch.Check.FLAGGED

    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", pathologist.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/batches/{batch.pk}/")
    alert = page.locator("#batch-check")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(batch_check.HEADLINE)
    expect(alert).to_contain_text(f"{batch.ood_score:.2f}")
    expect(page.locator("figure.cell.unidentified")).to_have_count(20)
    _shot(page, "batch-flagged")

    page.click("text=Report and sign-off")
    expect(page.locator("#batch-check")).to_contain_text(batch_check.HEADLINE)
    expect(page.locator("ul.flags")).to_contain_text("no cell was accepted automatically")
    expect(page.locator("dl.facts")).to_contain_text("Unlike the validation images")
    _shot(page, "report-flagged")
    assert console_errors == []
