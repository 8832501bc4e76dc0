"""A lab admin connects a LIS on the Integrations page and reads its delivery log, in Chromium.

With SCREENSHOT_DIR set the 1366x768 screenshot lands there (docs/screenshots/integrations-lis.png:
`SCREENSHOT_DIR=docs/screenshots pytest tests/e2e/test_lis_integration_in_browser.py`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.factories import (
    PASSWORD,
    CaseFactory,
    MembershipFactory,
    ModelVersionFactory,
    classified_batch,
)
from tests.mllp_listener import mllp_listener
from webportal.accounts.models import Role
from webportal.notifications import lis
from webportal.reports import services

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_lab_admin_connects_a_lis_and_sees_each_report_acknowledged(
    live_server, page: Page, console_errors: list[str], local_receivers_allowed, monkeypatch
) -> None:
    monkeypatch.setattr(lis, "_send", lambda delivery_id: None)  # sent below, as the poll does
    admin = MembershipFactory.create(role=Role.ADMIN, lab__name="St Elsewhere Haematology")
    pathologist = MembershipFactory.create(lab=admin.lab, role=Role.PATHOLOGIST).user
    base = live_server.url
    page.goto(f"{base}/login/")
    page.fill("#id_username", admin.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    with mllp_listener() as listener:
        page.goto(f"{base}/integrations/")
        page.click("summary:has-text('New LIS connection')")
        page.fill("#id_host", "127.0.0.1")
        page.fill("#id_port", str(listener.port))
        page.fill("#id_receiving_application", "LAB-LIS")
        page.click("button:has-text('Register') >> nth=-1")
        expect(page.locator("#lis + p + table")).to_contain_text(str(listener.port))
        batch = classified_batch(
            case=CaseFactory.create(lab=admin.lab, accession_number="H26-00042"),
            model_version=ModelVersionFactory.create(classes=["neutrophil", "lymphocyte"]),
            predictions=[("neutrophil", 0.99)] * 60 + [("lymphocyte", 0.99)] * 40,
        )
        signed = services.sign_report(actor=pathologist, report=batch.reports.get())
        services.amend_report(actor=pathologist, report=signed, reason="comment corrected")
        assert lis.deliver_due() == 2
    page.goto(f"{base}/integrations/#lis")
    log = page.locator("#lis-deliveries + table")
    expect(log).to_contain_text("Delivered")
    expect(log).to_contain_text("AA")
    expect(log).to_contain_text("H26-00042 v2 (amended)")
    assert len(listener.messages) == 2
    assert page.locator("#lis-deliveries + table tbody tr").count() == 2
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.locator("#lis").scroll_into_view_if_needed()
        page.screenshot(path=str(Path(folder) / "integrations-lis.png"))
    assert console_errors == []
