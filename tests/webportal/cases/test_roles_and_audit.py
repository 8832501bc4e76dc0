"""The case services check the caller's role and leave an audit event for each change."""

from __future__ import annotations

import io

import pytest

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory, MembershipFactory
from webportal.accounts.models import Role
from webportal.accounts.services import RoleRequired
from webportal.audit.models import AuditEvent
from webportal.cases import services
from webportal.cases.models import Batch, Case, ModelVersion

pytestmark = pytest.mark.django_db

WRITERS = [Role.STAFF, Role.PATHOLOGIST, Role.INTEGRATOR]


def _files(count: int) -> list[tuple[str, io.BytesIO]]:
    return [(f"cell-{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(count)]


@pytest.mark.parametrize("role", WRITERS)
def test_staff_pathologists_and_integrators_create_cases_and_the_trail_says_so(
    role: Role,
) -> None:
    member = MembershipFactory.create(role=role)
    case = services.create_case(
        lab=member.lab, created_by=member.user, accession_number="H-1", patient_external_id="P7"
    )
    event = AuditEvent.objects.get(action="case.created")
    assert (event.lab, event.actor, event.object_id) == (member.lab, member.user, str(case.pk))
    assert event.before is None
    assert event.after == {"accession_number": "H-1", "patient": "P7", "clinical_note": ""}


def test_a_lab_admin_may_not_create_cases_and_nothing_is_written() -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    with pytest.raises(RoleRequired, match="create cases"):
        services.create_case(lab=admin.lab, created_by=admin.user, accession_number="H-2")
    assert not Case.objects.exists()
    assert not AuditEvent.objects.exists()


def test_a_member_of_another_lab_may_not_create_a_case_in_this_one() -> None:
    outsider = MembershipFactory.create(role=Role.PATHOLOGIST)
    lab = MembershipFactory.create().lab
    with pytest.raises(RoleRequired):
        services.create_case(lab=lab, created_by=outsider.user, accession_number="H-3")


@pytest.mark.parametrize("role", WRITERS)
def test_writers_upload_batches_and_the_trail_counts_the_files(
    tiny_model: ModelVersion, role: Role
) -> None:
    member = MembershipFactory.create(role=role)
    case = CaseFactory.create(lab=member.lab)
    files = [*_files(2), ("bad.jpg", io.BytesIO(b"not an image"))]
    batch = services.submit_batch(case=case, created_by=member.user, files=files)
    event = AuditEvent.objects.get(action="batch.uploaded")
    assert (event.actor, event.object_type, event.object_id) == (
        member.user,
        "cases.batch",
        str(batch.pk),
    )
    assert event.after is not None
    assert (event.after["accepted"], event.after["rejected"]) == (2, 1)
    assert event.after["case"] == case.accession_number


def test_a_lab_admin_may_not_upload(tiny_model: ModelVersion) -> None:
    admin = MembershipFactory.create(role=Role.ADMIN)
    case = CaseFactory.create(lab=admin.lab)
    with pytest.raises(RoleRequired, match="upload"):
        services.submit_batch(case=case, created_by=admin.user, files=_files(1))
    assert not Batch.objects.exists()


def test_cancelling_records_the_status_before_and_after(tiny_model: ModelVersion) -> None:
    member = MembershipFactory.create(role=Role.STAFF)
    case = CaseFactory.create(lab=member.lab)
    batch = services.submit_batch(case=case, created_by=member.user, files=_files(1))
    assert services.cancel_batch(batch_id=batch.pk, actor=member.user)
    event = AuditEvent.objects.get(action="batch.cancelled")
    assert (event.before, event.after) == ({"status": "queued"}, {"status": "cancelled"})
    assert event.actor == member.user
    # A second cancel changes nothing, so it records nothing.
    assert not services.cancel_batch(batch_id=batch.pk, actor=member.user)
    assert AuditEvent.objects.filter(action="batch.cancelled").count() == 1


def test_a_lab_admin_may_not_cancel_a_batch(tiny_model: ModelVersion) -> None:
    staff = MembershipFactory.create(role=Role.STAFF)
    admin = MembershipFactory.create(lab=staff.lab, role=Role.ADMIN)
    case = CaseFactory.create(lab=staff.lab)
    batch = services.submit_batch(case=case, created_by=staff.user, files=_files(1))
    with pytest.raises(RoleRequired):
        services.cancel_batch(batch_id=batch.pk, actor=admin.user)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.QUEUED
