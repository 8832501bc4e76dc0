"""The lab's Model page in Chromium: the model in use and its batch guard, and the refusal of a
model without a guard until the admin says why.

With SCREENSHOT_DIR set the 1366x768 screenshots land there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.factories import PASSWORD, LabFactory, MembershipFactory, ModelVersionFactory
from webportal.accounts.models import Role
from webportal.audit.models import Action, AuditEvent

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _save(page: Page, name: str) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_the_admin_sees_the_guard_and_must_say_why_for_a_model_without_one(
    page: Page, console_errors: list[str], live_server
) -> None:
    lab = LabFactory.create(name="St Elsewhere Haematology")
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN)
    unguarded = ModelVersionFactory.create(name="kaggle4-old", guard={})
    guarded = ModelVersionFactory.create(
        name="pbc8-mobilenetv2", guard={"thresholds": {"1": 6.43, "20": 2.80, "100": 2.33}}
    )
    base = live_server.url
    page.goto(f"{base}/login/")
    page.fill("#id_username", admin.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")

    page.goto(f"{base}/lab/{lab.pk}/model/")
    expect(page.locator("#current-model")).to_contain_text(str(guarded))
    expect(page.locator("#current-guard")).to_contain_text("2.80")
    _save(page, "lab-model")

    page.select_option("#id_model_version", str(unguarded.pk))
    page.click("form.stacked button[type=submit]")
    expect(page.locator("form.stacked")).to_contain_text("has no batch guard")
    _save(page, "lab-model-refused")
    lab.refresh_from_db()
    assert lab.active_model is None

    page.select_option("#id_model_version", str(unguarded.pk))
    page.fill("#id_reason", "comparison study: every batch reviewed by hand")
    page.click("form.stacked button[type=submit]")
    expect(page.locator("#current-guard")).to_contain_text("none")
    _save(page, "lab-model-unguarded")
    event = AuditEvent.objects.get(action=Action.MODEL_ACTIVATED)
    assert event.after is not None
    assert event.after["reason"] == "comparison study: every batch reviewed by hand"
    assert console_errors == []
