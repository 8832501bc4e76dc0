from __future__ import annotations

import hashlib
import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tests.factories import CaseFactory, MembershipFactory, UserFactory
from tests.webportal.conftest import bearer
from webportal.accounts.models import Membership, Role
from webportal.api import tokens
from webportal.api.models import ApiToken
from webportal.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_issue_token_prints_the_token_alone_and_makes_an_integrator_of_the_lab(member) -> None:
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "issue_token", "--lab", member.lab.slug, "--username", "lis", stdout=out, stderr=err
    )
    printed = out.getvalue()
    assert printed.count("\n") == 1
    plaintext = printed.strip()
    assert plaintext.startswith("hv_")
    token = ApiToken.objects.get()
    assert token.lab == member.lab
    assert token.scope == ApiToken.Scope.READ_WRITE
    assert Membership.objects.get(user=token.user, lab=member.lab).role == Role.INTEGRATOR
    assert not token.user.has_usable_password()
    assert "shown only now" in err.getvalue()
    # Stored hashed: the database holds the digest, never the token.
    assert token.token_sha256 == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in str(ApiToken.objects.values().get())


def test_issue_token_again_for_the_same_account_gives_a_second_working_token(member) -> None:
    first = tokens.issue_token(lab=member.lab, username="lis")
    second = tokens.issue_token(lab=member.lab, username="lis", scope=ApiToken.Scope.READ)
    assert first.plaintext != second.plaintext
    assert first.token.user == second.token.user
    for issued in (first, second):
        assert bearer(issued.plaintext).get(reverse("api:case_list")).status_code == 200


def test_issue_token_refuses_an_unknown_lab_and_someone_elses_account(member) -> None:
    with pytest.raises(CommandError, match="No lab with slug 'nope'"):
        call_command("issue_token", "--lab", "nope", "--username", "lis")
    outsider = UserFactory.create()
    with pytest.raises(CommandError, match="not an integrator account"):
        call_command("issue_token", "--lab", member.lab.slug, "--username", outsider.username)
    # Without --role a token never acts as a person, even a member of the lab.
    with pytest.raises(CommandError, match="not an integrator account"):
        call_command("issue_token", "--lab", member.lab.slug, "--username", member.user.username)
    assert not ApiToken.objects.exists()


def test_issue_token_with_a_role_prints_a_personal_token_for_that_person_alone(member) -> None:
    out = io.StringIO()
    call_command(
        "issue_token", "--lab", member.lab.slug, "--username", "dr-who", "--role", "pathologist",
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    printed = out.getvalue()
    assert printed.count("\n") == 1
    token = ApiToken.objects.get()
    assert token.user.username == "dr-who"
    assert Membership.objects.get(user=token.user, lab=member.lab).role == Role.PATHOLOGIST
    assert (AuditEvent.objects.get(action="token.issued").after or {})["personal"] is True
    # The same person again: a second token of theirs; a different role is refused.
    call_command(
        "issue_token", "--lab", member.lab.slug, "--username", "dr-who", "--role", "pathologist",
        stdout=io.StringIO(), stderr=io.StringIO(),
    )  # fmt: skip
    assert ApiToken.objects.filter(user=token.user).count() == 2
    with pytest.raises(CommandError, match="is pathologist in"):
        call_command(
            "issue_token", "--lab", member.lab.slug, "--username", "dr-who", "--role", "staff"
        )
    assert bearer(printed.strip()).get(reverse("api:case_list")).status_code == 200


def test_a_lab_admin_cannot_make_a_token_for_a_person(member) -> None:
    admin = MembershipFactory.create(lab=member.lab, role=Role.ADMIN)
    pathologist = MembershipFactory.create(lab=member.lab, role=Role.PATHOLOGIST)
    with pytest.raises(tokens.TokenError, match="not an integrator account"):
        tokens.issue_token(
            lab=member.lab, username=pathologist.user.username, created_by=admin.user
        )
    with pytest.raises(tokens.TokenError, match="makes their own token"):
        tokens.issue_token(
            lab=member.lab, username=pathologist.user.username, created_by=admin.user,
            role=Role.PATHOLOGIST,
        )  # fmt: skip
    assert not ApiToken.objects.exists()


def test_a_person_makes_and_revokes_their_own_token_in_the_portal(member) -> None:
    pathologist = MembershipFactory.create(lab=member.lab, role=Role.PATHOLOGIST)
    client = Client()
    client.force_login(pathologist.user)
    page = client.post(
        reverse("personal_tokens:index"),
        {"lab": member.lab.pk, "name": "my script", "scope": "read_write"},
    )
    assert page.status_code == 200
    found = re.search(r"hv_[0-9a-f]{12}_[\w-]+", page.content.decode())
    assert found is not None
    token = ApiToken.objects.get()
    assert (token.user, token.created_by) == (pathologist.user, pathologist.user)
    assert bearer(found.group(0)).get(reverse("api:case_list")).status_code == 200
    assert found.group(0) not in client.get(reverse("personal_tokens:index")).content.decode()
    # Another person sees none of it and cannot revoke it.
    other = Client()
    other.force_login(MembershipFactory.create(lab=member.lab, role=Role.STAFF).user)
    assert "my script" not in other.get(reverse("personal_tokens:index")).content.decode()
    revoke = reverse("personal_tokens:revoke", args=[token.pk])
    assert other.post(revoke).status_code == 404
    assert client.post(revoke).status_code == 302
    token.refresh_from_db()
    assert not token.is_active


def test_a_revoked_token_gets_401_and_its_last_use_stays_recorded(member, issued) -> None:
    client = bearer(issued.plaintext)
    assert client.get(reverse("api:case_list")).status_code == 200
    issued.token.refresh_from_db()
    assert issued.token.last_used_at is not None
    tokens.revoke_token(token=issued.token)
    response = client.get(reverse("api:case_list"))
    assert response.status_code == 401
    assert response.json()["error"] == "authentication_failed"


@pytest.mark.parametrize(
    "header", ["Bearer hv_nothing_here", "Bearer", "Bearer a b", "Bearer not-a-token"]
)
def test_a_wrong_token_gets_401_in_the_error_shape(member, header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    body = client.get(reverse("api:case_list")).json()
    assert set(body) == {"error", "detail", "fields"}
    assert body["error"] == "authentication_failed"


def test_a_token_of_an_account_that_left_the_lab_stops_working(member, issued) -> None:
    Membership.objects.filter(user=issued.token.user).delete()
    assert bearer(issued.plaintext).get(reverse("api:case_list")).status_code == 401


def test_a_read_only_token_reads_but_cannot_write(read_only_api: APIClient, case) -> None:
    assert read_only_api.get(reverse("api:case_detail", args=[case.pk])).status_code == 200
    response = read_only_api.post(
        reverse("api:case_list"), {"accession_number": "X-1"}, format="json"
    )
    assert response.status_code == 403
    assert response.json() == {
        "error": "permission_denied",
        "detail": "This token is read-only.",
        "fields": {},
    }


def test_a_token_sees_only_its_own_lab_even_when_its_account_has_two(member) -> None:
    issued = tokens.issue_token(lab=member.lab, username="lis")
    other = MembershipFactory.create(user=issued.token.user).lab
    mine, theirs = CaseFactory.create(lab=member.lab), CaseFactory.create(lab=other)
    client = bearer(issued.plaintext)
    listed = [case["id"] for case in client.get(reverse("api:case_list")).json()["results"]]
    assert listed == [mine.pk]
    assert client.get(reverse("api:case_detail", args=[theirs.pk])).status_code == 404


def test_requests_beyond_the_rate_are_throttled_per_token(member, monkeypatch) -> None:
    from django.core.cache import cache

    from webportal.interfaces.api.throttling import PerTokenRateThrottle

    cache.clear()
    monkeypatch.setattr(PerTokenRateThrottle, "THROTTLE_RATES", {"token": "2/minute"})
    first = bearer(tokens.issue_token(lab=member.lab, username="a").plaintext)
    second = bearer(tokens.issue_token(lab=member.lab, username="b").plaintext)
    codes = [first.get(reverse("api:case_list")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    throttled = first.get(reverse("api:case_list"))
    assert throttled.json()["error"] == "throttled"
    assert int(throttled["Retry-After"]) > 0
    assert second.get(reverse("api:case_list")).status_code == 200
    cache.clear()
