"""The lab admin's pages: only a lab's admin reaches them; another lab's are not found."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import MembershipFactory, ModelVersionFactory
from webportal.accounts.models import Invitation, Membership, Role
from webportal.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-test-password-42"  # the factories' password


def _client(membership: Membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def _admin_pages(membership: Membership) -> list[str]:
    lab = membership.lab.pk
    return [
        reverse("accounts:members", args=[lab]),
        reverse("accounts:lab_model", args=[lab]),
        reverse("audit:audit_trail", args=[lab]),
    ]


def test_a_lab_admin_sees_members_model_and_audit_pages() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    client = _client(admin)
    for url in _admin_pages(admin):
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize("role", [Role.STAFF, Role.PATHOLOGIST])
def test_other_members_of_the_lab_are_refused_with_a_reason(role: Role) -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    member = MembershipFactory.create(lab=admin.lab, role=role)
    for url in _admin_pages(admin):
        response = _client(member).get(url)
        assert response.status_code == 403, url
        assert b"Only a lab admin" in response.content


def test_another_labs_admin_pages_are_not_found() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    other_admin = MembershipFactory.create(role=Role.ADMIN)
    for url in _admin_pages(admin):
        assert _client(other_admin).get(url).status_code == 404, url


def test_the_admin_adds_changes_and_removes_a_member_in_the_portal() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    client = _client(admin)
    members = reverse("accounts:members", args=[admin.lab.pk])
    response = client.post(
        members,
        {"username": "newtech", "role": "staff", "password": "slide-stain-microscope-41"},
    )
    assert response.status_code == 302
    membership = Membership.objects.get(user__username="newtech")
    client.post(
        reverse("accounts:member_role", args=[admin.lab.pk, membership.pk]),
        {"role": "pathologist"},
    )
    membership.refresh_from_db()
    assert membership.role == Role.PATHOLOGIST
    page = client.get(members)
    assert b"newtech" in page.content
    client.post(reverse("accounts:member_remove", args=[admin.lab.pk, membership.pk]))
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert list(AuditEvent.objects.order_by("id").values_list("action", flat=True)) == [
        "member.added",
        "member.role_changed",
        "member.removed",
    ]


def test_a_member_of_another_lab_cannot_be_changed_through_this_labs_pages() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    foreign = MembershipFactory.create(role=Role.STAFF)
    response = _client(admin).post(
        reverse("accounts:member_role", args=[admin.lab.pk, foreign.pk]), {"role": "admin"}
    )
    assert response.status_code == 404
    foreign.refresh_from_db()
    assert foreign.role == Role.STAFF


def test_the_add_member_form_answers_alike_for_a_username_that_exists_and_one_that_does_not() -> (
    None
):
    admin = MembershipFactory.create(role=Role.ADMIN)
    existing = MembershipFactory.create(role=Role.PATHOLOGIST).user.username  # another lab's
    client = _client(admin)
    members = reverse("accounts:members", args=[admin.lab.pk])
    pages = []
    for username in (existing, "nobody-by-this-name"):
        response = client.post(members, {"username": username, "role": "pathologist"}, follow=True)
        assert response.status_code == 200
        page = response.content.decode().replace(username, "NAME")
        pages.append(re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", page))
    assert pages[0] == pages[1]
    assert "is invited as pathologist" in pages[0]
    assert not Membership.objects.filter(lab=admin.lab, user__username=existing).exists()


def test_an_invited_user_accepts_on_their_invitations_page() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    person = MembershipFactory.create(role=Role.STAFF)
    _client(admin).post(
        reverse("accounts:members", args=[admin.lab.pk]),
        {"username": person.user.username, "role": "staff"},
    )
    client = _client(person)
    page = client.get(reverse("accounts:invitations")).content.decode()
    assert str(admin.lab) in page
    invitation = Invitation.objects.get()
    stranger = _client(MembershipFactory.create(role=Role.STAFF))
    answer = reverse("accounts:answer_invitation", args=[invitation.pk])
    assert stranger.post(answer, {"answer": "accept"}).status_code == 404
    assert client.post(answer, {"answer": "accept"}).status_code == 302
    assert Membership.objects.get(user=person.user, lab=admin.lab).role == Role.STAFF


def test_the_admin_activates_a_model_from_the_portal() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    model = ModelVersionFactory.create()
    response = _client(admin).post(
        reverse("accounts:lab_model", args=[admin.lab.pk]), {"model_version": model.pk}
    )
    assert response.status_code == 302
    admin.lab.refresh_from_db()
    assert admin.lab.active_model == model
    assert AuditEvent.objects.filter(action="model.activated").exists()


def test_the_model_page_names_the_model_in_use_and_its_guard() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    ModelVersionFactory.create(name="older")
    newest = ModelVersionFactory.create(
        name="pbc8", guard={"thresholds": {"20": 1.87, "100": 1.42}}
    )
    page = _client(admin).get(reverse("accounts:lab_model", args=[admin.lab.pk]))
    html = page.content.decode()
    current = html[html.index('id="current-model"') : html.index('id="current-guard"')]
    assert str(newest) in current
    guard = html[html.index('id="current-guard"') :]
    assert "1.87" in guard[: guard.index("</p>")]
    assert "1.42" in guard[: guard.index("</p>")]


def test_the_model_page_names_the_guards_design_and_a_model_that_auto_accepts_nothing() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    adapted = ModelVersionFactory.create(
        name="pbc8 adapted",
        lab=admin.lab,
        threshold=2.0,  # ml.adapt.NO_AUTO_ACCEPT: above every confidence
        metrics={"auto_accept": {"threshold": None, "cells": 80, "cells_needed": 299}},
        guard={"thresholds": {"20": 2.8, "100": 2.3}, "design": "pooled + early", "taps": [3, 6]},
    )
    admin.lab.active_model = adapted
    admin.lab.save()

    html = _client(admin).get(reverse("accounts:lab_model", args=[admin.lab.pk])).content.decode()

    guard = html[html.index('id="current-guard"') :]
    guard = guard[: guard.index("</p>")]
    assert "pooled + early" in guard
    assert "blocks 3, 6" in guard
    assert "2.80" in guard
    accepting = html[html.index('id="current-threshold"') :]
    accepting = accepting[: accepting.index("</p>")]
    assert "<strong>none</strong>" in accepting
    assert "80 reviewed cells; a threshold needs at least 299" in accepting
    assert "none reached: nothing auto-accepted" in html  # the table's threshold column
    assert "2.000" not in html


def test_the_model_page_says_which_way_an_adapted_model_was_adapted_and_why() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    adapted = ModelVersionFactory.create(
        name="pbc8 adapted",
        lab=admin.lab,
        threshold=2.0,
        metrics={
            "chosen": "lab-bn",
            "candidates": {
                "lab-bn": {"oof_right": 31, "oof_cells": 40, "oof_log_loss": 0.7},
                "reinhard": {"oof_right": 27, "oof_cells": 40, "oof_log_loss": 0.9},
            },
        },
    )
    admin.lab.active_model = adapted
    admin.lab.save()

    html = _client(admin).get(reverse("accounts:lab_model", args=[admin.lab.pk])).content.decode()

    said = html[html.index('id="current-adaptation"') :]
    said = said[: said.index("</p>")]
    assert "Adapted with the lab&#x27;s own picture statistics" in said
    assert "named 31 of 40 right, against 27 of 40 with colour normalisation" in said


def test_the_model_page_of_a_shared_model_says_nothing_of_an_adaptation() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    ModelVersionFactory.create(name="pbc8")

    html = _client(admin).get(reverse("accounts:lab_model", args=[admin.lab.pk])).content.decode()

    assert 'id="current-adaptation"' not in html


def test_choosing_a_model_without_a_guard_on_the_page_asks_why_and_changes_nothing() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    unguarded = ModelVersionFactory.create(name="no-guard", guard={})
    url = reverse("accounts:lab_model", args=[admin.lab.pk])
    response = _client(admin).post(url, {"model_version": unguarded.pk})
    assert response.status_code == 200
    assert b"has no batch guard" in response.content
    admin.lab.refresh_from_db()
    assert admin.lab.active_model is None

    response = _client(admin).post(
        url, {"model_version": unguarded.pk, "reason": "comparison study, all cells reviewed"}
    )
    assert response.status_code == 302
    admin.lab.refresh_from_db()
    assert admin.lab.active_model == unguarded


def test_a_user_changes_their_password_in_the_portal() -> None:
    member = MembershipFactory.create()
    client = _client(member)
    assert client.get(reverse("accounts:password_change")).status_code == 200
    response = client.post(
        reverse("accounts:password_change"),
        {
            "old_password": PASSWORD,
            "new_password1": "differential-count-2026",
            "new_password2": "differential-count-2026",
        },
    )
    assert response.status_code == 302
    member.user.refresh_from_db()
    assert member.user.check_password("differential-count-2026")


def test_an_integrator_gets_the_api_but_no_portal_page() -> None:
    integrator = MembershipFactory.create(role=Role.INTEGRATOR)
    client = _client(integrator)
    for name in ["cases:case_list", "worklist:worklist", "accounts:password_change"]:
        assert client.get(reverse(name)).status_code == 403, name
    assert client.get("/api/batches/999999/").status_code == 404


@pytest.mark.parametrize(
    ("role", "home"),
    [
        (Role.PATHOLOGIST, "worklist:worklist"),
        (Role.STAFF, "cases:case_list"),
        (Role.ADMIN, "accounts:lab_home"),
    ],
)
def test_each_role_starts_on_its_own_page(role: Role, home: str) -> None:
    response = _client(MembershipFactory.create(role=role)).get(reverse("home"))
    assert response.status_code == 302
    assert response["Location"] == reverse(home)
