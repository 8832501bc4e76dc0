"""A lab's first day: `manage.py create_lab` makes the lab and its first admin, no Django admin."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from webportal.accounts.models import Lab, Membership, Role
from webportal.audit.models import Action, AuditEvent

pytestmark = pytest.mark.django_db


def _create(*args: str) -> str:
    out = io.StringIO()
    call_command("create_lab", *args, stdout=out)
    return out.getvalue()


def test_a_new_lab_gets_its_admin_who_can_log_in_with_the_printed_password() -> None:
    out = _create("St Mary Haematology", "--slug", "st-mary", "--admin", "mary.admin")
    password = re.search(r"\(shown only now\): (\S+)", out)
    assert password is not None
    lab = Lab.objects.get(slug="st-mary")
    membership = Membership.objects.get(lab=lab)
    assert (membership.user.username, membership.role) == ("mary.admin", Role.ADMIN)
    assert not membership.user.is_staff  # a lab admin, not a Django admin
    client = Client()
    login = client.post("/login/", {"username": "mary.admin", "password": password.group(1)})
    assert login.status_code == 302
    assert client.get(f"/lab/{lab.pk}/members/").status_code == 200
    event = AuditEvent.objects.get(lab=lab)
    assert event.action == Action.MEMBER_ADDED
    assert event.actor is None


def test_a_second_lab_can_share_the_first_labs_admin_and_takes_a_password_file(tmp_path) -> None:
    _create("St Mary Haematology", "--slug", "st-mary", "--admin", "mary.admin")
    out = _create("North Clinic", "--slug", "north", "--admin", "mary.admin")
    assert "shown only now" not in out  # an existing user keeps their password
    assert set(Membership.objects.filter(user__username="mary.admin").values_list(
        "lab__slug", flat=True)) == {"st-mary", "north"}  # fmt: skip
    secret = tmp_path / "pw"
    secret.write_text("a long enough passphrase 2026\n")
    _create("East Lab", "--slug", "east", "--admin", "east.admin", "--password-file", str(secret))
    assert User.objects.get(username="east.admin").check_password("a long enough passphrase 2026")


def test_an_existing_lab_or_a_weak_password_is_refused_and_changes_nothing(tmp_path) -> None:
    _create("St Mary Haematology", "--slug", "st-mary", "--admin", "mary.admin")
    with pytest.raises(CommandError, match="exists already"):
        _create("Other", "--slug", "st-mary", "--admin", "someone")
    weak = tmp_path / "pw"
    weak.write_text("123\n")
    with pytest.raises(CommandError, match="too short"):
        _create("Weak Lab", "--slug", "weak", "--admin", "weak.admin", "--password-file", str(weak))
    assert not Lab.objects.filter(slug__in=["weak"]).exists()
    assert not User.objects.filter(username__in=["someone", "weak.admin"]).exists()
