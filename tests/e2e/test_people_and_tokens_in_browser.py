"""Issue 21's pages in Chromium: a person's own tokens, invitations, the members page with a
locked-out member and an invitation, and the lockout page, under the policy, at 1366 x 768."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.factories import PASSWORD, MembershipFactory
from webportal.accounts import services
from webportal.accounts.models import Role

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = Path(os.environ.get("SCREENSHOT_DIR", "")) if os.environ.get("SCREENSHOT_DIR") else None


def _shot(page: Page, name: str) -> None:
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def _log_in(page: Page, base: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")


def test_a_person_makes_a_token_joins_a_lab_and_an_admin_unlocks_a_member(
    page: Page, console_errors: list[str], live_server
) -> None:
    base = live_server.url
    admin = MembershipFactory.create(role=Role.ADMIN)
    pathologist = MembershipFactory.create(role=Role.PATHOLOGIST)  # of another lab
    locked = MembershipFactory.create(lab=admin.lab, role=Role.STAFF)
    services.add_member_as_admin(
        admin=admin.user, lab=admin.lab, username=pathologist.user.username, role="pathologist"
    )

    # A member's wrong passwords: the lockout page says until when.
    for _ in range(5):
        _log_in(page, base, locked.user.username, "a-wrong-guess")
    expect(page.locator("h1")).to_have_text("Log-in locked")
    expect(page.locator("#locked-out")).to_contain_text("Try again after")
    _shot(page, "lockout")

    # The invited pathologist: their invitations, then their own token.
    page.context.clear_cookies()
    _log_in(page, base, pathologist.user.username)
    page.goto(f"{base}/account/invitations/")
    expect(page.locator("#invitations")).to_contain_text(str(admin.lab))
    _shot(page, "invitations")
    page.click("button[value=accept]")
    expect(page.locator("#invitations")).to_contain_text("No invitations")
    page.goto(f"{base}/account/tokens/")
    page.fill("#id_name", "my review script")
    page.click("section.card button[type=submit]")
    expect(page.locator(".token-once pre.secret")).to_contain_text("hv_")
    _shot(page, "personal-tokens")

    # The lab admin: the new member, the locked one with its Unlock button.
    page.context.clear_cookies()
    _log_in(page, base, admin.user.username)
    page.goto(f"{base}/lab/{admin.lab.pk}/members/")
    expect(page.locator("#members")).to_contain_text(pathologist.user.username)
    expect(page.locator("#members")).to_contain_text("log-in locked")
    _shot(page, "members-locked")
    page.click(f"button[aria-label='Unlock {locked.user.username}']")
    expect(page.locator("#members")).not_to_contain_text("log-in locked")
    page.goto(f"{base}/integrations/")
    _shot(page, "integrations")
    # The lockout page answers 429 by design; nothing else (no policy violation).
    assert [error for error in console_errors if "429" not in error] == []
