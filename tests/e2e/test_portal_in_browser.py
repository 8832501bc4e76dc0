"""The portal as a person uses it: headless Chromium, the live server and a real worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import LazySettings
from playwright.sync_api import Page, expect

from tests.conftest import noisy_jpeg_bytes
from tests.factories import PASSWORD
from tests.services import celery_worker
from webportal.cases.models import ModelVersion
from webportal.celery import use_broker

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_technologist_uploads_a_batch_and_sees_the_differential(
    page: Page,
    live_server,
    member,
    tiny_model: ModelVersion,
    tmp_path: Path,
    settings: LazySettings,
) -> None:
    broker = ("filesystem://", tmp_path / "broker")
    use_broker(*broker)
    files = []
    for index in range(3):
        path = tmp_path / f"cell-{index}.jpg"
        path.write_bytes(noisy_jpeg_bytes())
        files.append(str(path))
    note = tmp_path / "smear-notes.jpg"
    note.write_text("not an image at all")
    files.append(str(note))

    try:
        with celery_worker(
            broker_url=broker[0], broker_folder=broker[1], log_path=tmp_path / "worker.log"
        ):
            page.goto(live_server.url)
            expect(page).to_have_url(f"{live_server.url}/login/?next=/")
            page.fill("#id_username", member.user.username)
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")

            page.click("summary:has-text('New case')")
            page.fill("#id_accession_number", "E2E-1")
            page.click("button:has-text('Create case')")
            expect(page.locator("h1")).to_have_text("Case E2E-1")

            page.set_input_files("#id_images", files)
            page.click("button:has-text('Upload and classify')")
            expect(page.locator("#rejected")).to_contain_text("smear-notes.jpg")
            # The page polls for progress and reloads itself when the batch is done.
            expect(page.locator("#differential")).to_be_visible(timeout=90_000)
            page.screenshot(path=str(tmp_path / "batch.png"), full_page=True)
    finally:
        use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)

    expect(page.locator("#batch-status")).to_have_text("Done")
    expect(page.locator("figure.cell")).to_have_count(3)
    expect(page.locator("#rejected")).to_contain_text("Not an image")
    rows = page.locator("#differential tbody tr")
    counts = [int(rows.nth(i).locator("td").nth(1).inner_text()) for i in range(rows.count())]
    assert sum(counts) == 3
