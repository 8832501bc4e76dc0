"""A reviewer on a field's page in headless Chromium: draws a missed cell, discards a false one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.factories import PASSWORD
from webportal.cases import services
from webportal.cases.models import Cell, ModelVersion
from webportal.pipeline import batch_job
from webportal.reports.differential import NOT_CLASSED

pytestmark = [pytest.mark.django_db(transaction=True)]

FIELDS = Path(__file__).resolve().parents[2] / "samples" / "fields"


def test_a_reviewer_draws_a_missed_cell_and_discards_a_false_one(
    page: Page, live_server, member, case, tiny_model: ModelVersion, tmp_path: Path, console_errors
) -> None:
    data = io.BytesIO((FIELDS / "BloodImage_00044.jpg").read_bytes())
    batch = services.submit_batch(
        case=case, created_by=None, files=[("BloodImage_00044.jpg", data)]
    )
    batch_job.process_batch(batch_id=batch.pk)
    field = batch.images.get()
    located = list(field.cells.order_by("id"))
    assert len(located) == 2
    label = tiny_model.classes[1]

    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", member.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{live_server.url}/batches/{batch.pk}/")
    page.click(f"a[href='/cells/{located[0].pk}/']")  # a crop in the batch's gallery
    page.click("#open-field")
    expect(page.locator("h1")).to_have_text("Field BloodImage_00044.jpg")
    expect(page.locator("svg#field g.box")).to_have_count(2)

    # Draw a box over the top right of the field (640x480 shown at the SVG's size).
    svg = page.locator("svg#field").bounding_box()
    assert svg is not None
    scale = svg["width"] / 640
    page.mouse.move(svg["x"] + 420 * scale, svg["y"] + 30 * scale)
    page.mouse.down()
    page.mouse.move(svg["x"] + 480 * scale, svg["y"] + 70 * scale, steps=5)
    page.mouse.move(svg["x"] + 520 * scale, svg["y"] + 110 * scale, steps=5)
    page.mouse.up()
    expect(page.locator("#add-button")).to_be_enabled()
    page.select_option("#add-label", label)
    page.screenshot(path=str(tmp_path / "field-drawn.png"))
    page.click("#add-button")
    expect(page.locator("svg#field g.box")).to_have_count(3)

    added = field.cells.get(origin=Cell.Origin.REVIEWER)
    x, y, w, h = added.box or []
    assert abs(x - 420) <= 3
    assert abs(y - 30) <= 3
    assert abs(w - 100) <= 3
    assert abs(h - 80) <= 3
    assert added.reviews.get().label == label
    expect(page.locator(f"svg#field g.box[data-cell='{added.pk}'] text")).to_have_text(label)

    page.click(f"button[data-discard='{located[0].pk}']")
    expect(page.locator(f"svg#field g.box.discarded[data-cell='{located[0].pk}']")).to_have_count(1)
    assert located[0].reviews.get().label == NOT_CLASSED
    page.screenshot(path=str(tmp_path / "field-reviewed.png"), full_page=True)
    report = batch.reports.order_by("-id")[0]
    assert report.total_cells == 2  # two located, one added, one discarded (not counted)
    counted = {row["label"]: row["count"] for row in report.differential}
    assert counted[NOT_CLASSED] == 1
    assert console_errors == []
