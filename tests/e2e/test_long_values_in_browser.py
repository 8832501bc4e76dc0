"""A long accession number wraps instead of widening the pages that show it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from playwright.sync_api import Page

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory
from webportal.cases import services
from webportal.cases.models import ModelVersion

pytestmark = pytest.mark.django_db(transaction=True)


def session_for(user: User) -> str:
    """A logged-in session's cookie value, without going through the login form."""
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_a_100_character_accession_number_does_not_widen_the_page(
    page: Page, live_server, member, tiny_model: ModelVersion, tmp_path: Path
) -> None:
    case = CaseFactory.create(lab=member.lab, accession_number="ACC" + "7" * 97)
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    page.context.add_cookies(
        [{"name": "sessionid", "value": session_for(member.user), "url": live_server.url}]
    )
    for name, path in [
        ("case-list", "/"),
        ("case", f"/cases/{case.pk}/"),
        ("batch", f"/batches/{batch.pk}/"),
    ]:
        page.goto(f"{live_server.url}{path}")
        page.screenshot(path=str(tmp_path / f"long-accession-{name}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} is {overflow} px wider than the window"
