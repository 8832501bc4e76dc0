"""Each role reaches the pages it may and is refused the others, within its own lab."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import (
    BatchFactory,
    CaseFactory,
    LabFactory,
    MembershipFactory,
    PatientFactory,
    ReportFactory,
)
from webportal.accounts.models import Lab, Role

pytestmark = pytest.mark.django_db

OK, REFUSED = 200, 403
# page name -> the answer each role gets (its own lab's objects)
EXPECTED = {
    "worklist": {Role.STAFF: OK, Role.PATHOLOGIST: OK, Role.ADMIN: OK, Role.INTEGRATOR: REFUSED},
    "case_list": {Role.STAFF: OK, Role.PATHOLOGIST: OK, Role.ADMIN: OK, Role.INTEGRATOR: REFUSED},
    "patient": {Role.STAFF: OK, Role.PATHOLOGIST: OK, Role.ADMIN: OK, Role.INTEGRATOR: REFUSED},
    "members": {
        Role.STAFF: REFUSED,
        Role.PATHOLOGIST: REFUSED,
        Role.ADMIN: OK,
        Role.INTEGRATOR: REFUSED,
    },
    "model": {
        Role.STAFF: REFUSED,
        Role.PATHOLOGIST: REFUSED,
        Role.ADMIN: OK,
        Role.INTEGRATOR: REFUSED,
    },
    "ranges": {
        Role.STAFF: REFUSED,
        Role.PATHOLOGIST: REFUSED,
        Role.ADMIN: OK,
        Role.INTEGRATOR: REFUSED,
    },
    "audit": {
        Role.STAFF: REFUSED,
        Role.PATHOLOGIST: REFUSED,
        Role.ADMIN: OK,
        Role.INTEGRATOR: REFUSED,
    },
    "agreement": {
        Role.STAFF: REFUSED,
        Role.PATHOLOGIST: OK,
        Role.ADMIN: OK,
        Role.INTEGRATOR: REFUSED,
    },
}


def _url(page: str, lab: Lab, patient_id: int) -> str:
    return {
        "worklist": reverse("worklist:worklist"),
        "case_list": reverse("cases:case_list"),
        "patient": reverse("worklist:patient_detail", args=[patient_id]),
        "members": reverse("accounts:members", args=[lab.pk]),
        "model": reverse("accounts:lab_model", args=[lab.pk]),
        "ranges": reverse("accounts:reference_ranges", args=[lab.pk]),
        "audit": reverse("audit:audit_trail", args=[lab.pk]),
        "agreement": reverse("quality:agreement", args=[lab.pk]),
    }[page]


@pytest.mark.parametrize("role", list(Role))
def test_each_role_gets_exactly_the_pages_of_its_role(role: Role) -> None:
    lab = LabFactory.create()
    patient = PatientFactory.create(lab=lab)
    ReportFactory.create(
        batch=BatchFactory.create(case=CaseFactory.create(lab=lab, patient=patient))
    )
    client = Client()
    client.force_login(MembershipFactory.create(lab=lab, role=role).user)
    got = {page: client.get(_url(page, lab, patient.pk)).status_code for page in EXPECTED}
    assert got == {page: answers[role] for page, answers in EXPECTED.items()}
