"""Every page is sent with a strict Content-Security-Policy, and no template needs it loosened."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import noisy_jpeg_bytes
from webportal.cases import services

pytestmark = pytest.mark.django_db

TEMPLATES = Path(__file__).resolve().parents[2] / "webportal" / "templates"


def directives(header: str) -> dict[str, list[str]]:
    parts = [part.split() for part in header.split(";") if part.strip()]
    return {part[0]: part[1:] for part in parts}


@pytest.fixture
def pages(member, case, tiny_model) -> list[str]:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    return [
        reverse("cases:case_list"),
        reverse("cases:case_detail", args=[case.pk]),
        reverse("cases:batch_detail", args=[batch.pk]),
        reverse("admin:index"),
    ]


def test_pages_are_sent_with_a_strict_policy(member, pages: list[str]) -> None:
    member.user.is_staff = True
    member.user.save()
    client = Client()
    client.force_login(member.user)
    for url in [*pages, reverse("login"), reverse("admin:login")]:
        response = Client().get(url) if "login" in url else client.get(url)
        assert response.status_code == 200, url
        policy = directives(response["Content-Security-Policy"])
        assert policy["default-src"] == ["'none'"], url
        assert policy["script-src"] == ["'self'"], url
        assert policy["style-src"] == ["'self'"], url
        assert policy["object-src"] == ["'none'"], url
        assert policy["frame-ancestors"] == ["'none'"], url


def test_the_policy_allows_nothing_inline_nor_eval(client: Client) -> None:
    header = client.get(reverse("login"))["Content-Security-Policy"]
    assert "unsafe-inline" not in header
    assert "unsafe-eval" not in header
    assert "unsafe-hashes" not in header


@pytest.mark.parametrize("template", sorted(TEMPLATES.rglob("*.html")), ids=lambda path: path.name)
def test_no_template_has_an_inline_script_or_style(template: Path) -> None:
    html = template.read_text()
    inline_scripts = [tag for tag in re.findall(r"<script\b[^>]*>", html) if "src=" not in tag]
    assert inline_scripts == []
    assert re.findall(r"<style\b|\sstyle=|\son[a-z]+=", html) == []


def test_a_running_batchs_page_loads_its_script_from_a_static_file(
    client: Client, member, case, tiny_model
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    client.force_login(member.user)
    page = client.get(reverse("cases:batch_detail", args=[batch.pk])).content.decode()
    assert '<script src="/static/portal/batch.js" defer></script>' in page
    assert client.get("/static/portal/batch.js").status_code == 200


def test_the_favicon_needs_no_login(client: Client) -> None:
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"].endswith("/portal/favicon.svg")
