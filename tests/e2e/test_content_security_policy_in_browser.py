"""The pages' own scripts run under the strict Content-Security-Policy, with no violation."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import noisy_jpeg_bytes
from tests.factories import PASSWORD
from webportal.cases import services
from webportal.cases.models import Batch, ModelVersion
from webportal.pipeline import batch_job

pytestmark = pytest.mark.django_db(transaction=True)


def log_in(page: Page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Cases")


def test_the_batch_page_follows_progress_and_reloads_when_done_under_the_policy(
    page: Page,
    console_errors: list[str],
    live_server,
    member,
    case,
    tiny_model: ModelVersion,
    tmp_path: Path,
) -> None:
    files = [(f"c{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(2)]
    batch = services.submit_batch(case=case, created_by=member.user, files=files)
    log_in(page, live_server.url, member.user.username)

    response = page.goto(f"{live_server.url}/batches/{batch.pk}/")
    assert response is not None
    assert "script-src 'self'" in response.headers["content-security-policy"]
    expect(page.locator("#batch-status")).to_have_text("Queued")
    # The script's first poll comes back: it ran.
    with page.expect_response(lambda r: r.url.endswith("/status.json")):
        pass
    page.screenshot(path=str(tmp_path / "batch-in-progress.png"), full_page=True)

    batch_job.process_batch(batch_id=batch.pk)
    assert Batch.objects.get(pk=batch.pk).status == Batch.Status.DONE
    # The script sees the batch finished and reloads the page, which now shows the results.
    expect(page.locator("#differential")).to_be_visible(timeout=15_000)
    expect(page.locator("#batch-status")).to_have_text("Done")
    page.screenshot(path=str(tmp_path / "batch-done.png"), full_page=True)
    assert console_errors == []


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_the_login_pages_show_no_policy_violation(
    page: Page, console_errors: list[str], live_server, path: str
) -> None:
    page.goto(f"{live_server.url}{path}")
    expect(page.locator("#id_username")).to_be_visible()
    assert console_errors == []
