"""The same files sent again (going back after an upload) are held until the user confirms."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory
from webportal.audit.models import AuditEvent
from webportal.cases import services
from webportal.cases.models import Batch

pytestmark = pytest.mark.django_db


def files_of(contents: list[bytes]) -> list[tuple[str, io.BytesIO]]:
    return [(f"cell-{i}.jpg", io.BytesIO(data)) for i, data in enumerate(contents)]


def submit(case, contents: list[bytes], *, hold: bool = True) -> Batch:
    return services.submit_batch(
        case=case, created_by=None, files=files_of(contents), hold_if_duplicate=hold
    )


@pytest.fixture
def images() -> list[bytes]:
    return [noisy_jpeg_bytes() for _ in range(3)]


def test_the_same_files_again_are_held_not_queued(
    case, tiny_model, images, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as first_sent:
        first = submit(case, images)
    with django_capture_on_commit_callbacks() as again_sent:
        again = submit(case, images)
    assert first.status == Batch.Status.QUEUED
    assert again.status == Batch.Status.HELD
    assert sum("enqueue_on_commit" in repr(cb) for cb in first_sent) == 1
    assert sum("enqueue_on_commit" in repr(cb) for cb in again_sent) == 0
    assert services.earlier_batch_with_same_images(batch=again) == first


def test_the_same_images_inside_a_zip_are_recognised(case, tiny_model, images) -> None:
    first = submit(case, images)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        for i, data in enumerate(images):
            zf.writestr(f"renamed-{i}.jpg", data)
    again = services.submit_batch(
        case=case,
        created_by=None,
        files=[("smear.zip", io.BytesIO(archive.getvalue()))],
        hold_if_duplicate=True,
    )
    assert again.status == Batch.Status.HELD
    assert services.earlier_batch_with_same_images(batch=again) == first


def test_new_images_or_a_part_of_an_earlier_batch_are_not_held(case, tiny_model, images) -> None:
    submit(case, images)
    assert submit(case, [noisy_jpeg_bytes() for _ in range(3)]).status == Batch.Status.QUEUED
    assert submit(case, images[:2]).status == Batch.Status.QUEUED  # part of batch 1 only


def test_sending_a_cancelled_batchs_images_again_is_not_held(case, tiny_model, images) -> None:
    first = submit(case, images)
    services.cancel_batch(batch_id=first.pk)
    assert submit(case, images).status == Batch.Status.QUEUED


def test_the_api_path_without_the_hold_queues_as_before(case, tiny_model, images) -> None:
    submit(case, images, hold=False)
    assert submit(case, images, hold=False).status == Batch.Status.QUEUED


def test_another_case_with_the_same_images_is_not_a_repeat(case, tiny_model, images) -> None:
    submit(CaseFactory.create(lab=case.lab), images)
    assert submit(case, images).status == Batch.Status.QUEUED


def test_confirming_queues_the_held_batch_once_and_records_it(
    case, tiny_model, images, django_capture_on_commit_callbacks
) -> None:
    submit(case, images)
    held = submit(case, images)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert services.confirm_batch(batch_id=held.pk)
    held.refresh_from_db()
    assert held.status == Batch.Status.QUEUED
    # The task message, sent after the commit.
    assert sum("enqueue_on_commit" in repr(cb) for cb in callbacks) == 1
    assert not services.confirm_batch(batch_id=held.pk)
    assert AuditEvent.objects.filter(action="batch.confirmed", object_id=str(held.pk)).count() == 1


def test_a_held_batch_can_be_discarded(case, tiny_model, images) -> None:
    submit(case, images)
    held = submit(case, images)
    assert services.cancel_batch(batch_id=held.pk)
    held.refresh_from_db()
    assert held.status == Batch.Status.CANCELLED
    assert not services.confirm_batch(batch_id=held.pk)


def test_the_portal_warns_and_one_click_goes_on(member, case, tiny_model, images) -> None:
    client = Client()
    client.force_login(member.user)
    url = reverse("cases:case_detail", args=[case.pk])
    upload = {"priority": "routine"}
    client.post(url, {**upload, "images": [io.BytesIO(d) for d in images]})
    first = case.batches.get()

    response = client.post(url, {**upload, "images": [io.BytesIO(d) for d in images]}, follow=True)
    held = case.batches.exclude(pk=first.pk).get()
    page = response.content.decode()
    assert held.status == Batch.Status.HELD
    assert 'id="held"' in page
    assert f"Batch #{first.pk}</a> of this case" in page
    assert "Classify anyway" in page
    assert "Discard this upload" in page
    assert "portal/batch.js" not in page  # nothing to follow until it is confirmed

    response = client.post(reverse("cases:batch_confirm", args=[held.pk]), follow=True)
    held.refresh_from_db()
    assert held.status == Batch.Status.QUEUED
    assert "being classified again" in response.content.decode()


def test_the_portal_can_discard_the_repeat(member, case, tiny_model, images) -> None:
    client = Client()
    client.force_login(member.user)
    url = reverse("cases:case_detail", args=[case.pk])
    for _ in range(2):
        client.post(url, {"priority": "routine", "images": [io.BytesIO(d) for d in images]})
    held = case.batches.get(status=Batch.Status.HELD)
    # The held card is itself the question ("classify anyway" or "discard"): its discard
    # button sends the confirmation.
    page = client.get(reverse("cases:batch_detail", args=[held.pk])).content.decode()
    assert 'name="confirm" value="yes"' in page
    client.post(reverse("cases:batch_cancel", args=[held.pk]), {"confirm": "yes"})
    held.refresh_from_db()
    assert held.status == Batch.Status.CANCELLED
