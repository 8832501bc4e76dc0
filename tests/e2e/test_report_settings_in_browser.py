"""The pages that feed a report's content, in headless Chromium: the new-case form with the
patient's details and the specimen, and the lab admin's lab details, members' names and
titles, and reference ranges by sex and age band.

With SCREENSHOT_DIR set the 1366x768 screenshots land there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.factories import PASSWORD, BatchFactory, CaseFactory, MembershipFactory
from webportal.accounts.models import Lab, Membership, Role
from webportal.cases.models import Batch, Case
from webportal.reports.models import ReferenceRange

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


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
        page.screenshot(
            path=str(Path(folder) / f"{name}.png"), full_page=name.startswith("reference")
        )


def test_a_case_is_made_with_patient_and_specimen_details_in_the_browser(
    browser: Browser, live_server
) -> None:
    staff = MembershipFactory.create(role=Role.STAFF)
    page = _log_in(browser, live_server.url, staff)
    page.click("summary:has-text('New case')")
    page.fill("#id_accession_number", "H26-0001")
    page.fill("#id_patient_external_id", "MRN-42")
    page.fill("#id_family_name", "Doe")
    page.fill("#id_given_name", "Jane")
    page.fill("#id_birth_date", "1961-04-12")
    page.select_option("#id_sex", "female")
    page.fill("#id_specimen_type", "Venous blood, EDTA")
    page.fill("#id_specimen_collected_at", "2026-03-02T08:10")
    page.fill("#id_specimen_received_at", "2026-03-02T09:02")
    page.fill("#id_requester", "Dr R. Osler, Haematology clinic")
    _shot(page, "case-form")
    page.click("button:has-text('Create case')")
    expect(page.locator("h1")).to_have_text("Case H26-0001")
    expect(page.locator("main")).to_contain_text("DOE, Jane · born 1961-04-12 · Female")
    expect(page.locator("#specimen")).to_contain_text(
        "Venous blood, EDTA · collected 2026-03-02 08:10"
    )
    _shot(page, "case-page")
    case = Case.objects.get(accession_number="H26-0001")
    assert case.patient is not None
    assert (case.patient.name, case.specimen_type) == ("DOE, Jane", "Venous blood, EDTA")


def test_a_lab_admin_sets_the_labs_details_a_title_and_a_childs_range(
    browser: Browser, live_server
) -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    pathologist = MembershipFactory.create(lab=admin.lab, role=Role.PATHOLOGIST)
    page = _log_in(browser, live_server.url, admin)
    page.goto(f"{live_server.url}/lab/{admin.lab.pk}/details/")
    page.fill("#id_address", "Department of Haematology\n1 Infirmary Road, Oxford OX3 9DU")
    page.fill("#id_accreditation", "UKAS 8123")
    page.fill("#id_director", "Dr Grace Hopper, FRCPath")
    page.click("button:has-text('Save details')")
    expect(page.locator(".message").first).to_contain_text("saved")
    _shot(page, "lab-details")
    assert Lab.objects.get(pk=admin.lab.pk).accreditation == "UKAS 8123"

    page.goto(f"{live_server.url}/lab/{admin.lab.pk}/members/")
    membership = pathologist.pk
    page.fill(f"#first-{membership}", "Ada")
    page.fill(f"#last-{membership}", "Lovelace")
    page.fill(f"#title-{membership}", "Consultant haematologist")
    page.click(f"button[aria-label='Save the name and title of {pathologist.user.username}']")
    expect(page.locator(f"#title-{membership}")).to_have_value("Consultant haematologist")
    _shot(page, "members-titles")

    page.goto(f"{live_server.url}/lab/{admin.lab.pk}/ranges/")
    page.select_option("#band-label", "neutrophil")
    page.fill("#band-from", "1")
    page.fill("#band-to", "12")
    page.fill("#band-low", "20")
    page.fill("#band-high", "50")
    page.fill("#band-low-abs", "1.5")
    page.fill("#band-high-abs", "8.5")
    page.click('button:has-text("Save the band\'s range")')
    expect(page.locator("#bands")).to_contain_text("1 to 11 years")
    _shot(page, "reference-ranges-bands")
    assert ReferenceRange.objects.get(lab=admin.lab, age_from_years=1).high_absolute == 8.5

    # The audit trail says all of it in words.
    page.goto(f"{live_server.url}/lab/{admin.lab.pk}/audit/")
    events = page.locator("#events")
    expect(events).to_contain_text("Lab's details changed")
    expect(events).to_contain_text("Accreditation number")
    expect(events).to_contain_text("Member's name and title changed")
    expect(events).to_contain_text("1 to 11 years")
    expect(events).not_to_contain_text("None")
    _shot(page, "audit-trail-words")


def test_cancelling_a_batch_asks_first_in_the_browser(browser: Browser, live_server) -> None:
    staff = MembershipFactory.create(role=Role.STAFF)
    batch = BatchFactory.create(
        case=CaseFactory.create(lab=staff.lab), status=Batch.Status.QUEUED, total_images=12
    )
    page = _log_in(browser, live_server.url, staff)
    page.goto(f"{live_server.url}/batches/{batch.pk}/")
    page.click("#cancel-batch summary")
    expect(page.locator("#cancel-batch")).to_contain_text(f"Cancel batch #{batch.pk}?")
    _shot(page, "batch-cancel-confirm")
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.QUEUED
    page.click(f"button:has-text('Yes, cancel batch #{batch.pk}')")
    expect(page.locator(".message").first).to_contain_text("Batch cancelled")
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.CANCELLED
