"""What the lab's reports say of the lab and of the people who sign them: a lab admin sets the
lab's address, accreditation number and director, and each member's full name and title;
every change is audited, and nobody else may make it."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from webportal.accounts.models import Lab, Profile, Role, person_line
from webportal.accounts.services import update_lab_details, update_person
from webportal.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_lab_admin_sets_the_labs_details_and_the_change_is_audited(lab, people) -> None:
    update_lab_details(
        admin=people[Role.ADMIN],
        lab=lab,
        address="  1 Infirmary Road \n Oxford  ",
        accreditation="UKAS  8123",
        director="Dr Grace Hopper",
    )
    lab.refresh_from_db()
    assert (lab.address, lab.accreditation, lab.director) == (
        "1 Infirmary Road\nOxford",
        "UKAS 8123",
        "Dr Grace Hopper",
    )
    event = AuditEvent.objects.get(action="lab.details_changed")
    assert event.before == {"address": "", "accreditation": "", "director": ""}
    assert event.after == {
        "address": "1 Infirmary Road\nOxford",
        "accreditation": "UKAS 8123",
        "director": "Dr Grace Hopper",
    }


@pytest.mark.parametrize("role", [Role.STAFF, Role.PATHOLOGIST, Role.INTEGRATOR])
def test_only_a_lab_admin_changes_the_labs_details(lab, people, role: str) -> None:
    with pytest.raises(PermissionDenied):
        update_lab_details(admin=people[role], lab=lab, address="x", accreditation="", director="")
    assert Lab.objects.get(pk=lab.pk).address == ""
    assert not AuditEvent.objects.filter(action="lab.details_changed").exists()


def test_a_members_name_and_title_are_what_their_signature_prints(lab, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    assert person_line(pathologist) == pathologist.username
    update_person(
        admin=people[Role.ADMIN],
        membership=pathologist.memberships.get(lab=lab),
        first_name="Ada",
        last_name="Lovelace",
        title="Consultant haematologist",
    )
    pathologist.refresh_from_db()
    assert person_line(pathologist) == "Ada Lovelace, Consultant haematologist"
    event = AuditEvent.objects.get(action="member.person_changed")
    assert event.before is not None
    assert event.after is not None
    assert (event.before["title"], event.after["title"]) == ("", "Consultant haematologist")
    with pytest.raises(PermissionDenied):
        update_person(
            admin=people[Role.STAFF],
            membership=pathologist.memberships.get(lab=lab),
            first_name="Eve",
            last_name="",
            title="",
        )
    assert Profile.objects.get(user=pathologist).title == "Consultant haematologist"


def test_the_lab_details_page_saves_them_for_the_admin_and_refuses_others(lab, people) -> None:
    url = reverse("accounts:lab_details", args=[lab.pk])
    admin = _client(people[Role.ADMIN])
    assert "Accreditation number" in admin.get(url).content.decode()
    response = admin.post(
        url, {"address": "1 Road", "accreditation": "UKAS 1", "director": "Dr G. Hopper"}
    )
    assert response.status_code == 302
    lab.refresh_from_db()
    assert (lab.address, lab.accreditation, lab.director) == ("1 Road", "UKAS 1", "Dr G. Hopper")
    staff = _client(people[Role.STAFF])
    assert staff.post(url, {"address": "2 Road"}).status_code == 403
    assert Lab.objects.get(pk=lab.pk).address == "1 Road"


def test_the_members_page_sets_a_members_name_and_title(lab, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    membership = pathologist.memberships.get(lab=lab)
    admin = _client(people[Role.ADMIN])
    response = admin.post(
        reverse("accounts:member_person", args=[lab.pk, membership.pk]),
        {"first_name": "Ada", "last_name": "Lovelace", "title": "Consultant haematologist"},
    )
    assert response.status_code == 302
    page = admin.get(reverse("accounts:members", args=[lab.pk])).content.decode()
    assert 'value="Consultant haematologist"' in page
    assert 'value="Lovelace"' in page
