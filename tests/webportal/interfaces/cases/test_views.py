from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory, MembershipFactory
from webportal.cases import services
from webportal.cases.models import Batch, Case
from webportal.pipeline import batch_job

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


def test_a_duplicate_accession_number_is_refused_once_with_one_message(
    client_of: Client, member
) -> None:
    services.create_case(lab=member.lab, created_by=None, accession_number="H-77")
    response = client_of.post(
        reverse("cases:case_list"), {"lab": member.lab.pk, "accession_number": " h-77 "}
    )
    assert response.status_code == 200
    assert response.content.decode().count("already exists") == 1
    assert "Accession number H-77 already exists" in response.content.decode()
    assert Case.objects.filter(lab=member.lab).count() == 1


def test_a_long_accession_number_is_refused_with_a_message_not_cut(
    client_of: Client, member
) -> None:
    page = client_of.get(reverse("cases:case_list")).content.decode()
    assert "maxlength" not in page  # the browser would cut a pasted value without a word
    response = client_of.post(
        reverse("cases:case_list"), {"lab": member.lab.pk, "accession_number": "7" * 130}
    )
    assert response.status_code == 200
    assert "at most 100 characters (this one has 130)" in response.content.decode()
    assert not Case.objects.filter(lab=member.lab).exists()


def test_an_accession_number_with_spaces_is_measured_after_normalising(
    client_of: Client, member
) -> None:
    typed = "H-1" + " " * 120 + "B"
    response = client_of.post(
        reverse("cases:case_list"), {"lab": member.lab.pk, "accession_number": typed}
    )
    assert response.status_code == 302
    assert Case.objects.get(lab=member.lab).accession_number == "H-1 B"


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
    batch_job.process_batch(batch_id=batch.pk)
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


def test_cancelling_from_the_batch_page_asks_first_then_cancels(
    client_of: Client, case, tiny_model
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    url = reverse("cases:batch_cancel", args=[batch.pk])
    assert (
        'id="cancel-batch"'
        in client_of.get(reverse("cases:batch_detail", args=[batch.pk])).content.decode()
    )
    # Without the confirmation: a page that asks, and nothing cancelled.
    asked = client_of.post(url)
    assert asked.status_code == 200
    assert f"Cancel batch #{batch.pk}?" in asked.content.decode()
    assert 'name="confirm" value="yes"' in asked.content.decode()
    batch.refresh_from_db()
    assert batch.status == Batch.Status.QUEUED
    client_of.post(url, {"confirm": "yes"})
    batch.refresh_from_db()
    assert batch.status == Batch.Status.CANCELLED


def test_more_files_than_the_limit_is_a_form_error_stating_it_not_a_bare_400(
    member, case, tiny_model, settings
) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    browser = Client(enforce_csrf_checks=True)  # as a browser: the CSRF check runs
    browser.force_login(member.user)
    url = reverse("cases:case_detail", args=[case.pk])
    token = browser.get(url).cookies["csrftoken"].value
    files = [io.BytesIO(noisy_jpeg_bytes()) for _ in range(4)]
    for number, handle in enumerate(files):
        handle.name = f"cell{number}.jpg"

    response = browser.post(
        url, {"csrfmiddlewaretoken": token, "images": files, "priority": "routine"}
    )

    assert response.status_code == 400
    page = response.content.decode()
    assert "at most 3 files can be sent at once" in page
    assert 'class="errorlist' in page  # on the form, beside the file field
    assert "Upload and classify" in page
    assert not Batch.objects.filter(case=case).exists()
    files = files[:3]
    for handle in files:
        handle.seek(0)
    response = browser.post(
        url, {"csrfmiddlewaretoken": token, "images": files, "priority": "routine"}
    )
    assert response.status_code == 302
    assert Batch.objects.get(case=case).total_images == 3


def test_too_many_files_for_another_labs_case_says_not_found(member, tiny_model, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    foreign = CaseFactory.create()
    client = Client()
    client.force_login(member.user)
    files = [io.BytesIO(noisy_jpeg_bytes()) for _ in range(2)]
    for number, handle in enumerate(files):
        handle.name = f"cell{number}.jpg"
    response = client.post(reverse("cases:case_detail", args=[foreign.pk]), {"images": files})
    assert response.status_code == 404
