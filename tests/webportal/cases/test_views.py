from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory, MembershipFactory
from webportal.cases import processing, services
from webportal.cases.models import Batch, Case

pytestmark = pytest.mark.django_db


@pytest.fixture
def client_of(member) -> Client:
    client = Client()
    client.force_login(member.user)
    return client


@pytest.mark.parametrize("name", ["cases:case_list"])
def test_pages_redirect_anonymous_users_to_login(name: str) -> None:
    response = Client().get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_login_page_is_served() -> None:
    response = Client().get(reverse("login"))
    assert response.status_code == 200
    assert b"Log in" in response.content


def test_creating_a_case_from_the_case_list(client_of: Client, member) -> None:
    response = client_of.post(
        reverse("cases:case_list"),
        {"lab": member.lab.pk, "accession_number": "H-77", "patient_external_id": "MRN9"},
    )
    case = Case.objects.get(accession_number="H-77")
    assert response.status_code == 302
    assert case.lab == member.lab
    assert case.patient is not None
    assert case.patient.external_id == "MRN9"


def test_a_user_cannot_create_a_case_in_a_lab_they_do_not_belong_to(client_of: Client) -> None:
    other = MembershipFactory.create().lab
    response = client_of.post(
        reverse("cases:case_list"), {"lab": other.pk, "accession_number": "X-1"}
    )
    assert response.status_code == 200
    assert not Case.objects.filter(accession_number="X-1").exists()


def test_another_labs_case_batch_and_image_are_not_found(client_of: Client, tiny_model) -> None:
    foreign_case = CaseFactory.create()
    batch = services.submit_batch(
        case=foreign_case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    image = batch.images.get()
    for url in [
        reverse("cases:case_detail", args=[foreign_case.pk]),
        reverse("cases:batch_detail", args=[batch.pk]),
        reverse("cases:batch_status", args=[batch.pk]),
        reverse("cases:image_file", args=[image.pk]),
    ]:
        assert client_of.get(url).status_code == 404, url


def test_the_batch_page_shows_every_cell_and_the_differential_when_done(
    client_of: Client, case, tiny_model
) -> None:
    files = [(f"c{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(3)]
    batch = services.submit_batch(case=case, created_by=None, files=files)
    processing.process_batch(batch_id=batch.pk)
    page = client_of.get(reverse("cases:batch_detail", args=[batch.pk])).content.decode()
    assert page.count('<figure class="cell') == 3
    assert 'id="differential"' in page
    for label in tiny_model.classes:
        assert label in page
    image = batch.images.all()[0]
    assert client_of.get(reverse("cases:image_file", args=[image.pk])).status_code == 200


def test_status_json_reports_progress(client_of: Client, case, tiny_model) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    state = client_of.get(reverse("cases:batch_status", args=[batch.pk])).json()
    assert state == {
        "id": batch.pk,
        "status": "queued",
        "status_display": "Queued",
        "total_images": 1,
        "processed_images": 0,
        "progress_percent": 0,
        "finished": False,
        "error": "",
    }


def test_cancelling_from_the_batch_page(client_of: Client, case, tiny_model) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    client_of.post(reverse("cases:batch_cancel", args=[batch.pk]))
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED
