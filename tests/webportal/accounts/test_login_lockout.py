"""Password guessing: a username is locked after a few wrong passwords, on every login page."""

from __future__ import annotations

import runpy
from datetime import timedelta
from pathlib import Path

import pytest
from axes.exceptions import AxesBackendRequestParameterRequired
from django.contrib.auth.models import User
from django.test import Client, RequestFactory
from django.urls import reverse

from tests.factories import PASSWORD, MembershipFactory, UserFactory
from tests.webportal.conftest import Clock
from webportal.accounts.models import Role
from webportal.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

SETTINGS = Path(__file__).resolve().parents[3] / "webportal" / "settings.py"
LOGIN_PAGES = ["login", "admin:login"]


def attempt(client: Client, page: str, username: str, password: str) -> int:
    response = client.post(reverse(page), {"username": username, "password": password})
    return response.status_code


def logged_in(client: Client) -> bool:
    return client.get(reverse("cases:case_list")).status_code == 200


@pytest.fixture
def staff_user() -> User:
    # Staff, so the admin's login page lets them in too.
    return UserFactory.create(is_staff=True)


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_after_five_wrong_passwords_the_right_one_is_refused_for_fifteen_minutes(
    clock: Clock, staff_user: User, page: str
) -> None:
    client = Client()
    for _ in range(4):
        assert attempt(client, page, staff_user.username, "a-wrong-guess") == 200
    # The fifth wrong password locks the username and says so.
    assert attempt(client, page, staff_user.username, "a-wrong-guess") == 429
    response = client.post(reverse(page), {"username": staff_user.username, "password": PASSWORD})
    assert response.status_code == 429
    page_text = response.content.decode()
    assert "log-in is locked for 15 minutes" in page_text
    until = (clock.now + timedelta(minutes=15)).strftime("%H:%M")
    assert "Try again after <strong><time" in page_text
    assert until in page_text
    assert not logged_in(client)

    clock.advance(minutes=14)
    assert attempt(client, page, staff_user.username, PASSWORD) == 429
    # A try during the lockout does not start the 15 minutes again (that let anyone keep a
    # named user locked out for ever).
    clock.advance(minutes=2)
    assert attempt(client, page, staff_user.username, PASSWORD) == 302
    assert logged_in(client)


def test_guesses_from_another_address_do_not_lock_the_user_out_of_their_own(
    staff_user: User,
) -> None:
    attacker = Client(REMOTE_ADDR="198.51.100.7")
    for _ in range(12):
        attempt(attacker, "login", staff_user.username, "a-wrong-guess")
    assert attempt(attacker, "login", staff_user.username, PASSWORD) == 429
    assert attempt(Client(REMOTE_ADDR="203.0.113.9"), "login", staff_user.username, PASSWORD) == 302


def test_a_password_spray_from_one_address_locks_that_address(settings) -> None:
    settings.LOGIN_ADDRESS_FAILURE_LIMIT = 20
    users = [UserFactory.create() for _ in range(12)]
    sprayer = Client(REMOTE_ADDR="198.51.100.9")
    answers = [
        attempt(sprayer, "login", user.username, guess)
        for guess in ("Winter2026!", "Password123")
        for user in users
    ]
    assert answers[:20] == [200] * 20
    assert set(answers[20:]) == {429}  # slowed after 20 failures, whatever the usernames
    assert attempt(sprayer, "login", users[0].username, PASSWORD) == 429
    assert attempt(Client(REMOTE_ADDR="203.0.113.9"), "login", users[0].username, PASSWORD) == 302


def test_a_lab_admin_sees_and_unlocks_a_locked_member_and_both_are_audited() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    member = MembershipFactory.create(lab=admin.lab, role=Role.PATHOLOGIST)
    client = Client()
    for _ in range(5):
        attempt(client, "login", member.user.username, "a-wrong-guess")
    assert attempt(client, "login", member.user.username, PASSWORD) == 429
    admin_client = Client()
    admin_client.force_login(admin.user)
    members = reverse("accounts:members", args=[admin.lab.pk])
    assert "log-in locked" in admin_client.get(members).content.decode()
    unlock = reverse("accounts:member_unlock", args=[admin.lab.pk, member.pk])
    assert admin_client.post(unlock).status_code == 302
    assert attempt(client, "login", member.user.username, PASSWORD) == 302
    actions: list[tuple[str, int | None]] = list(
        AuditEvent.objects.filter(lab=admin.lab).order_by("id").values_list("action", "actor")
    )
    assert ("login.locked_out", None) in actions
    assert ("login.unlocked", admin.user.pk) in actions
    # Only the lab's admin may.
    staff = Client()
    staff.force_login(MembershipFactory.create(lab=admin.lab, role=Role.STAFF).user)
    assert staff.post(unlock).status_code == 403


def test_a_locked_username_does_not_lock_anyone_else(staff_user: User) -> None:
    colleague = UserFactory.create()
    client = Client()
    for _ in range(6):
        attempt(client, "login", staff_user.username, "a-wrong-guess")
    assert attempt(client, "login", colleague.username, PASSWORD) == 302


def test_a_successful_login_clears_the_count_of_failures(staff_user: User) -> None:
    for _ in range(3):
        client = Client()
        for _ in range(4):
            assert attempt(client, "login", staff_user.username, "a-wrong-guess") == 200
        assert attempt(client, "login", staff_user.username, PASSWORD) == 302


def test_the_lockout_page_keeps_the_site_layout_and_says_how_long(staff_user: User) -> None:
    client = Client()
    for _ in range(5):
        attempt(client, "login", staff_user.username, "a-wrong-guess")
    page = client.post(
        reverse("login"), {"username": staff_user.username, "password": PASSWORD}
    ).content.decode()
    assert "<h1>Log-in locked</h1>" in page
    assert "after 5 failed attempts" in page
    assert "ask your lab admin" in page


def test_the_test_clients_login_helpers_still_work(staff_user: User) -> None:
    forced = Client()
    forced.force_login(staff_user)
    assert logged_in(forced)

    # Client.login authenticates without a request unless given one; django-axes needs it.
    with_request = Client()
    request = RequestFactory().post("/login/")
    assert with_request.login(request=request, username=staff_user.username, password=PASSWORD)
    assert logged_in(with_request)

    # A code path that authenticates without the request would escape the lockout: it fails
    # loudly instead of silently.
    with pytest.raises(AxesBackendRequestParameterRequired):
        Client().login(username=staff_user.username, password=PASSWORD)


def test_the_limit_and_the_lockout_time_are_configurable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HEMATOVISION_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("DEBUG", "true")
    default = runpy.run_path(str(SETTINGS))
    assert default["AXES_FAILURE_LIMIT"] == 5
    assert default["AXES_COOLOFF_TIME"] == timedelta(minutes=15)
    monkeypatch.setenv("LOGIN_FAILURE_LIMIT", "10")
    monkeypatch.setenv("LOGIN_LOCKOUT_MINUTES", "60")
    custom = runpy.run_path(str(SETTINGS))
    assert custom["AXES_FAILURE_LIMIT"] == 10
    assert custom["AXES_COOLOFF_TIME"] == timedelta(minutes=60)


def test_behind_a_proxy_the_lockout_counts_the_address_the_proxy_saw(settings) -> None:
    settings.LOGIN_PROXY_COUNT = 1
    victim = UserFactory.create()

    def via_proxy(client_says: str) -> Client:
        return Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=client_says)

    for _ in range(6):  # the attacker's own X-Forwarded-For entry is not believed
        attempt(via_proxy("203.0.113.9, 198.51.100.7"), "login", victim.username, "wrong")
    assert attempt(via_proxy("198.51.100.7"), "login", victim.username, PASSWORD) == 429
    assert attempt(via_proxy("203.0.113.9"), "login", victim.username, PASSWORD) == 302
