from __future__ import annotations

import hashlib
import re

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import MembershipFactory
from tests.webportal.conftest import bearer
from webportal.accounts.models import Role
from webportal.api.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(db) -> tuple[Client, object]:
    admin = MembershipFactory.create(role=Role.ADMIN)
    client = Client()
    client.force_login(admin.user)
    return client, admin


def test_a_lab_admin_creates_a_token_that_is_shown_once_and_works(admin_client) -> None:
    client, admin = admin_client
    response = client.post(
        reverse("integrations:index"),
        {"name": "LIS production", "username": "lis-prod", "scope": "read"},
    )
    assert response.status_code == 200
    found = re.search(r"hv_[0-9a-f]{12}_[\w-]+", response.content.decode())
    assert found is not None
    plaintext = found.group(0)
    token = ApiToken.objects.get()
    assert (token.lab, token.scope, token.created_by) == (admin.lab, "read", admin.user)
    assert token.token_sha256 == hashlib.sha256(plaintext.encode()).hexdigest()
    assert bearer(plaintext).get(reverse("api:case_list")).status_code == 200
    page = client.get(reverse("integrations:index")).content.decode()
    assert plaintext not in page
    assert "LIS production" in page
    assert "lis-prod" in page


def test_a_lab_admin_revokes_a_token_and_it_stops_working(admin_client) -> None:
    client, _ = admin_client
    client.post(reverse("integrations:index"), {"name": "t", "username": "lis", "scope": "read"})
    token = ApiToken.objects.get()
    response = client.post(reverse("integrations:revoke_token", args=[token.pk]))
    assert response.status_code == 302
    token.refresh_from_db()
    assert not token.is_active
    assert "revoked" in client.get(reverse("integrations:index")).content.decode()


def test_staff_cannot_manage_tokens_nor_revoke_another_labs(admin_client) -> None:
    client, _ = admin_client
    staff = MembershipFactory.create(role=Role.STAFF)
    staff_client = Client()
    staff_client.force_login(staff.user)
    response = staff_client.post(
        reverse("integrations:index"), {"name": "t", "username": "x", "scope": "read"}
    )
    assert response.status_code == 403
    assert not ApiToken.objects.exists()
    other_admin = MembershipFactory.create(role=Role.ADMIN)
    other = Client()
    other.force_login(other_admin.user)
    other.post(reverse("integrations:index"), {"name": "t", "username": "y", "scope": "read"})
    foreign = ApiToken.objects.get()
    assert client.post(reverse("integrations:revoke_token", args=[foreign.pk])).status_code == 404
    foreign.refresh_from_db()
    assert foreign.is_active


def test_the_integrations_page_refuses_a_token_for_a_member_who_is_a_person(admin_client) -> None:
    client, admin = admin_client
    pathologist = MembershipFactory.create(lab=admin.lab, role=Role.PATHOLOGIST)
    response = client.post(
        reverse("integrations:index"),
        {"name": "sign as them", "username": pathologist.user.username, "scope": "read_write"},
    )
    assert response.status_code == 200
    assert "not an integrator account" in response.content.decode()
    assert not ApiToken.objects.exists()
