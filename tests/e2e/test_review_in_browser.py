"""The review gallery in headless Chromium: select, reclassify with the keyboard, sign.

It runs the shipped PBC model in-process on the committed demo cells (and flipped copies of
them), so the gallery, the cell page's heatmap and the report show real output. With
SCREENSHOT_DIR=<folder> it saves the screenshots committed under docs/screenshots.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from django.conf import LazySettings
from PIL import Image as PILImage
from playwright.sync_api import Page, expect

from tests.conftest import SAMPLES
from tests.factories import PASSWORD, MembershipFactory, PatientFactory
from tests.services import celery_worker
from webportal.accounts.models import Role
from webportal.cases import services
from webportal.cases.models import Batch, Case, Review
from webportal.celery import use_broker
from webportal.pipeline import batch_job, registration
from webportal.reports.models import Report

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PBC_MODEL = Path(__file__).resolve().parents[2] / "ml" / "weights" / "pbc8-mobilenetv2.pt"
LONG_NAME = (
    "scanner-export-2026-11-27-slide-0042-field-0317-very-long-name-that-must-not-overflow-"
    "its-card-neutrophil.jpg"
)


def _variants() -> list[tuple[str, io.BytesIO]]:
    """Each demo cell, plus copies flipped and turned (the class does not change)."""
    files = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        with PILImage.open(path) as original:
            picture = original.convert("RGB")
        turns = [
            ("", picture),
            ("-flip", picture.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)),
            ("-turn", picture.transpose(PILImage.Transpose.ROTATE_180)),
        ]
        for suffix, variant in turns:
            buffer = io.BytesIO()
            variant.save(buffer, format="JPEG", quality=92)
            buffer.seek(0)
            files.append((f"{path.stem}{suffix}.jpg", buffer))
    with PILImage.open(SAMPLES / "neutrophil-SNE_217967.jpg") as original:
        buffer = io.BytesIO()
        original.convert("RGB").transpose(PILImage.Transpose.ROTATE_90).save(buffer, "JPEG")
    buffer.seek(0)
    files.append((LONG_NAME, buffer))
    return files


@pytest.fixture
def reviewed_batch(db: None) -> tuple[Batch, object]:
    pathologist = MembershipFactory.create(role=Role.PATHOLOGIST)
    pathologist.user.first_name, pathologist.user.last_name = "Maria", "Okafor"
    pathologist.user.save()
    registration.register_model(checkpoint_path=PBC_MODEL, name="pbc8-mobilenetv2")
    case = Case.objects.create(
        lab=pathologist.lab,
        accession_number="H26-004217",
        patient=PatientFactory.create(lab=pathologist.lab, external_id="MRN-0042-7731"),
    )
    batch = services.submit_batch(case=case, created_by=None, files=_variants())
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE, batch.error
    return batch, pathologist.user


def _shot(page: Page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name))


def _log_in(page: Page, live_server, user) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")


def test_a_pathologist_reclassifies_with_the_keyboard_and_signs(
    page: Page, live_server, reviewed_batch, console_errors: list[str], tmp_path: Path,
    settings: LazySettings,
) -> None:  # fmt: skip
    batch, user = reviewed_batch
    _log_in(page, live_server, user)
    page.goto(f"{live_server.url}/batches/{batch.pk}/review/")
    assert batch.total_images == 49
    expect(page.locator("li.tile")).to_have_count(49)
    expect(page.locator("#selection-count")).to_have_text("No cell selected")

    # Long file names stay inside their cards.
    overflowing = page.evaluate(
        "Array.from(document.querySelectorAll('li.tile'))"
        ".filter(t => t.scrollWidth > t.clientWidth + 1).length"
    )
    assert overflowing == 0

    # Select every cell of the platelet group with one button, reclassify with key 0.
    platelets = page.locator('section.group[data-label="platelet"] li.tile')
    n_platelets = platelets.count()
    assert n_platelets >= 4
    page.click('section.group[data-label="platelet"] button.select-all')
    expect(page.locator("#selection-count")).to_have_text(f"{n_platelets} cells selected")
    page.keyboard.press("0")
    expect(page.locator("#review-status")).to_have_text(f"{n_platelets} cells → not classed")
    expect(page.locator('section.group[data-label="not classed"] .count')).to_have_text(
        str(n_platelets)
    )
    expect(page.locator('#live-differential tr[data-label="not classed"] td').nth(1)).to_have_text(
        str(n_platelets)
    )
    assert Review.objects.filter(label="not classed").count() == n_platelets

    # Click one tile, shift-click a later one: the range; number key 1 is the first class.
    tiles = page.locator('section.group[data-label="neutrophil"] li.tile button.pick')
    tiles.nth(0).click()
    tiles.nth(2).click(modifiers=["Shift"])
    expect(page.locator("#selection-count")).to_have_text("3 cells selected")
    page.evaluate("window.scrollTo(0, 0)")
    _shot(page, "review-gallery.png", tmp_path)
    first_class = page.locator("button.choice[data-key='1']").get_attribute("data-label")
    page.keyboard.press("1")
    expect(page.locator("#review-status")).to_have_text(f"3 cells → {first_class}")
    expect(page.locator("li.tile.reviewed")).to_have_count(n_platelets + 3)

    # Whatever is still unidentified gets a class, then the pathologist signs.
    unidentified = page.locator('section.group[data-label="unidentified"] li.tile')
    if unidentified.count():
        page.click('section.group[data-label="unidentified"] button.select-all')
        page.keyboard.press("7")
        expect(unidentified).to_have_count(0)

    # The cell page asks a worker for the Grad-CAM heatmap and shows it when it is stored.
    broker = ("filesystem://", tmp_path / "broker")
    use_broker(*broker)
    try:
        with celery_worker(
            broker_url=broker[0], broker_folder=broker[1], log_path=tmp_path / "worker.log"
        ):
            page.locator("li.tile a.name").first.click()
            expect(page.locator("#heatmap-status")).to_have_text("Computing the heatmap…")
            expect(page.locator("img.heatmap")).to_be_visible(timeout=90_000)
    finally:
        use_broker(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_FOLDER)
    assert page.locator("img.heatmap").evaluate("img => img.naturalWidth") > 0
    _shot(page, "cell-page.png", tmp_path)

    report = batch.reports.get()
    page.goto(f"{live_server.url}/reports/{report.pk}/")
    page.fill("#id_wbc_count", "7.9")
    page.fill("#id_comment", "Reviewed on the gallery; no blasts seen.")
    # Under the lab's minimum of 100 leukocytes (issue 19): signed with a stated reason.
    page.fill("#id_below_minimum_reason", "A demo batch of 49 cells.")
    page.click("button[name=sign]")
    expect(page.locator("h1 .status")).to_have_text("v1 · final")
    _shot(page, "report.png", tmp_path)
    report.refresh_from_db()
    assert (report.status, report.signed_by) == (Report.Status.FINAL, user)
    assert console_errors == []
