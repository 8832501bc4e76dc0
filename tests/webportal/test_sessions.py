"""Sessions end after a spell of inactivity and when the browser closes."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest
from django.conf import LazySettings
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.urls import reverse

from tests.factories import PASSWORD
from tests.webportal.conftest import Clock

pytestmark = pytest.mark.django_db

SETTINGS = Path(__file__).resolve().parents[2] / "webportal" / "settings.py"


def log_in(client: Client, username: str) -> None:
    response = client.post(reverse("login"), {"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.content


def test_a_session_ends_after_thirty_idle_minutes_but_not_while_in_use(
    clock: Clock, member
) -> None:
    client = Client()
    log_in(client, member.user.username)
    page = reverse("cases:case_list")
    for _ in range(4):  # an hour and more of work, never 30 minutes apart
        clock.advance(minutes=20)
        assert client.get(page).status_code == 200
    clock.advance(minutes=31)
    response = client.get(page)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def settings_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> dict[str, Any]:
    """The settings module as it reads the given environment."""
    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("DEBUG", "true")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


def test_the_idle_timeout_and_browser_close_are_configurable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = settings_with(monkeypatch, tmp_path)
    assert default["SESSION_COOKIE_AGE"] == 30 * 60
    assert default["SESSION_SAVE_EVERY_REQUEST"] is True
    assert default["SESSION_EXPIRE_AT_BROWSER_CLOSE"] is True
    custom = settings_with(
        monkeypatch, tmp_path, SESSION_IDLE_MINUTES="5", SESSION_EXPIRE_AT_BROWSER_CLOSE="false"
    )
    assert custom["SESSION_COOKIE_AGE"] == 5 * 60
    assert custom["SESSION_EXPIRE_AT_BROWSER_CLOSE"] is False
    with pytest.raises(ImproperlyConfigured, match="SESSION_IDLE_MINUTES must be from 1"):
        settings_with(monkeypatch, tmp_path, SESSION_IDLE_MINUTES="0")


def test_a_shorter_idle_timeout_takes_effect(clock: Clock, member, settings: LazySettings) -> None:
    settings.SESSION_COOKIE_AGE = 5 * 60
    client = Client()
    log_in(client, member.user.username)
    clock.advance(minutes=4)
    assert client.get(reverse("cases:case_list")).status_code == 200
    clock.advance(minutes=6)
    assert client.get(reverse("cases:case_list")).status_code == 302


def test_the_session_cookie_dies_with_the_browser(member) -> None:
    client = Client()
    log_in(client, member.user.username)
    cookie = client.cookies["sessionid"]
    assert cookie["expires"] == ""
    assert cookie["max-age"] == ""
    assert cookie["httponly"]
