from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.factories import CaseFactory, MembershipFactory
from webportal.accounts.models import Role
from webportal.audit.models import AuditEvent
from webportal.audit.services import record_event

pytestmark = pytest.mark.django_db


@pytest.fixture
def trail():
    admin = MembershipFactory.create(role=Role.ADMIN)
    staff = MembershipFactory.create(lab=admin.lab, role=Role.STAFF)
    first, second = CaseFactory.create(lab=admin.lab), CaseFactory.create(lab=admin.lab)
    record_event(lab=admin.lab, actor=staff.user, action="case.created", obj=first)
    record_event(lab=admin.lab, actor=staff.user, action="case.created", obj=second)
    record_event(
        lab=admin.lab,
        actor=admin.user,
        action="member.role_changed",
        obj=staff,
        before={"role": "staff"},
        after={"role": "pathologist"},
    )
    foreign = CaseFactory.create()
    record_event(lab=foreign.lab, actor=None, action="case.created", obj=foreign)
    client = Client()
    client.force_login(admin.user)
    url = reverse("audit:audit_trail", args=[admin.lab.pk])
    return {"client": client, "url": url, "staff": staff, "first": first, "foreign": foreign}


def _rows(response) -> int:
    return int(response.content.count(b'<tr class="event">'))


def test_the_trail_shows_only_this_labs_events_with_before_and_after(trail) -> None:
    response = trail["client"].get(trail["url"])
    assert _rows(response) == 3
    assert b"Member&#x27;s role changed" in response.content
    assert b"pathologist" in response.content
    assert f">Case #{trail['first'].pk}<".encode() in response.content
    assert f">Case #{trail['foreign'].pk}<".encode() not in response.content


def test_the_trail_filters_by_action_actor_object_and_date(trail) -> None:
    client, url = trail["client"], trail["url"]
    assert _rows(client.get(url, {"action": "case.created"})) == 2
    assert _rows(client.get(url, {"actor": trail["staff"].user.pk})) == 2
    by_object = client.get(url, {"object_type": "cases.case", "object_id": str(trail["first"].pk)})
    assert _rows(by_object) == 1
    tomorrow = (timezone.now() + timedelta(days=1)).date().isoformat()
    assert _rows(client.get(url, {"date_from": tomorrow})) == 0
    assert b"No events match" in client.get(url, {"date_from": tomorrow}).content
    today = timezone.now().date().isoformat()
    assert _rows(client.get(url, {"date_from": today, "date_to": today})) == 3


def test_the_trail_pages_fifty_events_at_a_time(trail) -> None:
    lab = trail["staff"].lab
    for _ in range(60):
        record_event(lab=lab, actor=None, action="case.created", obj=trail["first"])
    client, url = trail["client"], trail["url"]
    assert _rows(client.get(url)) == 50
    assert _rows(client.get(url, {"page": 2})) == 13
    assert AuditEvent.objects.filter(lab=lab).count() == 63


def test_the_trail_says_what_happened_in_words_not_codes_and_python_values(trail) -> None:
    staff = trail["staff"]
    record_event(
        lab=staff.lab,
        actor=staff.user,
        action="report.edited",
        obj=trail["first"],
        before={"wbc_count": None, "flags": ["low_count", "immature"], "comment": ""},
        after={"wbc_count": "7.50", "counts": {"neutrophil": 60, "monocyte": 8}, "new_user": True},
    )
    page = trail["client"].get(trail["url"]).content.decode()
    assert "Report remarks edited" in page
    assert "report.edited" not in page.replace('value="report.edited"', "")
    for words in ["WBC count (x10^9/L)", "low_count, immature", "monocyte 8, neutrophil 60"]:
        assert words in page
    assert "<dt>New user</dt><dd>yes</dd>" in page
    for python in ["None", "True", "['low_count'", "{'neutrophil'"]:
        assert python not in page
