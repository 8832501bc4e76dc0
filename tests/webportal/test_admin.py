"""Django's admin shows clinical records but cannot add, change or delete them."""

from __future__ import annotations

import io

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import User
from django.db.models import Model
from django.test import Client, RequestFactory
from django.urls import reverse

from tests.conftest import noisy_jpeg_bytes
from tests.factories import LabFactory, MembershipFactory, UserFactory
from webportal.cases import services
from webportal.cases.models import Batch, Case, Cell, Image, Patient, Prediction, Shard
from webportal.pipeline import batch_job
from webportal.reports.models import Report

pytestmark = pytest.mark.django_db

# Apps whose every model is a clinical record (or its trail); ModelVersion is the model
# registry, kept by the lab admin.
CLINICAL_APPS = {"cases", "reports", "audit"}
NOT_CLINICAL = {"cases.modelversion"}
SHOWN_IN_ADMIN = [Case, Patient, Batch, Shard, Image, Cell, Prediction, Report]


def clinical_models() -> list[type[Model]]:
    return [
        model
        for model in apps.get_models()
        if model._meta.app_label in CLINICAL_APPS and model._meta.label_lower not in NOT_CLINICAL
    ]


@pytest.fixture
def superuser() -> User:
    return UserFactory.create(is_staff=True, is_superuser=True)


def test_every_clinical_model_is_read_only_in_the_admin_even_for_a_superuser(
    superuser: User,
) -> None:
    request = RequestFactory().get("/admin/")
    request.user = superuser
    assert {model._meta.label for model in clinical_models()} >= {
        model._meta.label for model in SHOWN_IN_ADMIN
    }
    for model in clinical_models():
        model_admin = admin.site._registry.get(model)
        if model_admin is None:
            continue  # not in the admin at all: nothing to edit there either
        assert not model_admin.has_add_permission(request), model
        assert not model_admin.has_change_permission(request), model
        assert not model_admin.has_delete_permission(request), model
        assert model_admin.has_view_permission(request), model


@pytest.mark.parametrize("model", SHOWN_IN_ADMIN, ids=lambda model: model.__name__)
def test_clinical_records_are_listed_in_the_admin(superuser: User, model: type[Model]) -> None:
    assert model in admin.site._registry
    client = Client()
    client.force_login(superuser)
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert client.get(url).status_code == 200


def test_a_superuser_cannot_edit_a_finished_batch_through_the_admin(
    superuser: User, case, tiny_model
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    client = Client()
    client.force_login(superuser)
    change_url = reverse("admin:cases_batch_change", args=[batch.pk])

    page = client.get(change_url)
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # a view, not a form

    response = client.post(
        change_url,
        {
            "case": case.pk,
            "priority": "routine",
            "status": "queued",
            "model_version": tiny_model.pk,
            "total_images": 99,
            "processed_images": 0,
            "rejected_files": 0,
            "stalled_attempts": 0,
        },
    )
    assert response.status_code == 403
    assert client.post(reverse("admin:cases_batch_delete", args=[batch.pk])).status_code == 403
    assert client.get(reverse("admin:cases_batch_add")).status_code == 403
    after = Batch.objects.get(pk=batch.pk)
    assert (after.status, after.total_images) == (Batch.Status.DONE, 1)


def test_a_superuser_cannot_change_a_prediction_through_the_admin(
    superuser: User, case, tiny_model
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    prediction = Prediction.objects.get(cell__image__batch=batch)
    before = (prediction.label, prediction.confidence)
    client = Client()
    client.force_login(superuser)
    url = reverse("admin:cases_prediction_change", args=[prediction.pk])
    other_label = next(label for label in tiny_model.classes if label != prediction.label)
    response = client.post(url, {"label": other_label, "confidence": 1.0})
    assert response.status_code == 403
    prediction.refresh_from_db()
    assert (prediction.label, prediction.confidence) == before


def test_the_admin_cannot_give_a_lab_another_labs_model_nor_change_a_role(
    superuser: User, tiny_model
) -> None:
    """The probe's finding: a superuser changed a role and gave lab B lab A's adapted model,
    with no audit event."""
    from webportal.accounts.models import Lab, Membership, Role
    from webportal.audit.models import AuditEvent
    from webportal.cases.models import ModelVersion

    lab_a = LabFactory.create()
    lab_b = LabFactory.create()
    adapted = ModelVersion.objects.create(
        name="adapted-a", lab=lab_a, architecture="x", classes=["a"], checkpoint_sha256="0" * 64,
        checkpoint_path="/nowhere.pt",
        input_size=8, mean=[0, 0, 0], std=[1, 1, 1],
    )  # fmt: skip
    member = MembershipFactory.create(lab=lab_b, role=Role.STAFF)
    client = Client()
    client.force_login(superuser)
    url = reverse("admin:accounts_lab_change", args=[lab_b.pk])
    form = {
        "name": lab_b.name,
        "slug": lab_b.slug,
        "active_model": adapted.pk,
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "1",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": member.pk,
        "memberships-0-lab": lab_b.pk,
        "memberships-0-user": member.user.pk,
        "memberships-0-role": Role.PATHOLOGIST,
    }
    client.post(url, form)
    lab_b.refresh_from_db()
    assert lab_b.active_model is None
    assert Membership.objects.get(pk=member.pk).role == Role.STAFF
    # The model registry is read-only too, and a lab is never deleted here.
    model_admin = admin.site._registry[ModelVersion]
    request = RequestFactory().get("/admin/")
    request.user = superuser
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert not admin.site._registry[Lab].has_delete_permission(request)
    # What the admin may do (rename a lab) is audited.
    assert AuditEvent.objects.filter(lab=lab_b, action="lab.changed", actor=superuser).exists()
