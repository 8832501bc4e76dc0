from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import MembershipFactory, ModelVersionFactory
from webportal.accounts.models import Lab, Role
from webportal.audit.models import AuditEvent
from webportal.reports.services import reference_ranges_for

pytestmark = pytest.mark.django_db


def _client(role: Role, lab: Lab | None = None) -> tuple[Client, Lab]:
    membership = MembershipFactory.create(role=role, **({"lab": lab} if lab else {}))
    client = Client()
    client.force_login(membership.user)
    return client, membership.lab


def test_the_admin_sees_the_defaults_and_sets_the_labs_own_range() -> None:
    ModelVersionFactory.create(classes=["lymphocyte", "neutrophil", "platelet"])
    client, lab = _client(Role.ADMIN)
    url = reverse("accounts:reference_ranges", args=[lab.pk])
    page = client.get(url).content.decode()
    assert "neutrophil" in page
    assert "platelet" in page  # a class of the model without a default range
    response = client.post(url, {"label": "neutrophil", "low_percent": 45, "high_percent": 70})
    assert response.status_code == 302
    assert reference_ranges_for(lab=lab)["neutrophil"] == (45.0, 70.0)
    event = AuditEvent.objects.get(action="reference_range.changed")
    assert event.after == {"label": "neutrophil", "low": 45.0, "high": 70.0}
    assert "lab's own" in client.get(url).content.decode()


def test_a_range_upside_down_is_refused_with_the_reason() -> None:
    client, lab = _client(Role.ADMIN)
    url = reverse("accounts:reference_ranges", args=[lab.pk])
    response = client.post(
        url, {"label": "monocyte", "low_percent": 12, "high_percent": 2}, follow=True
    )
    assert b"low &lt;= high" in response.content
    assert not AuditEvent.objects.exists()


def test_only_the_labs_admin_reaches_the_ranges() -> None:
    _, lab = _client(Role.ADMIN)
    url = reverse("accounts:reference_ranges", args=[lab.pk])
    pathologist, _ = _client(Role.PATHOLOGIST, lab)
    assert pathologist.get(url).status_code == 403
    assert (
        pathologist.post(url, {"label": "ig", "low_percent": 0, "high_percent": 5}).status_code
        == 403
    )
    other_admin, _ = _client(Role.ADMIN)
    assert other_admin.get(url).status_code == 404


def test_the_admin_sets_a_range_for_one_sex_and_age_band_with_absolute_limits() -> None:
    from webportal.reports.services import reference_intervals_for

    client, lab = _client(Role.ADMIN)
    url = reverse("accounts:reference_ranges", args=[lab.pk])
    response = client.post(
        url,
        {
            "label": "neutrophil",
            "sex": "female",
            "age_from_years": 1,
            "age_to_years": 12,
            "low_percent": 20,
            "high_percent": 50,
            "low_absolute": 1.5,
            "high_absolute": 8.5,
        },
    )
    assert response.status_code == 302
    girl = reference_intervals_for(lab=lab, sex="female", age_years=6)
    assert (girl.percent["neutrophil"], girl.absolute["neutrophil"]) == ((20, 50), (1.5, 8.5))
    assert reference_intervals_for(lab=lab, sex="male", age_years=6).percent["neutrophil"] == (
        40.0,
        75.0,
    )
    page = client.get(url).content.decode()
    assert "1 to 11 years" in page
    event = AuditEvent.objects.get(action="reference_range.changed")
    assert event.after == {
        "label": "neutrophil",
        "low": 20.0,
        "high": 50.0,
        "low_absolute": 1.5,
        "high_absolute": 8.5,
        "sex": "female",
        "age": "1 to 11 years",
    }


def test_an_absolute_range_with_one_limit_is_refused_with_the_reason() -> None:
    client, lab = _client(Role.ADMIN)
    url = reverse("accounts:reference_ranges", args=[lab.pk])
    response = client.post(
        url,
        {"label": "monocyte", "low_percent": 2, "high_percent": 10, "low_absolute": 0.2},
        follow=True,
    )
    assert "Give both absolute limits" in response.content.decode()
    assert not AuditEvent.objects.exists()
