from __future__ import annotations

import io

import pytest
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory
from webportal.cases import processing, services
from webportal.cases.models import Batch, ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(member) -> APIClient:
    client = APIClient()
    token = Token.objects.create(user=member.user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def _upload(name: str, content: bytes) -> io.BytesIO:
    handle = io.BytesIO(content)
    handle.name = name
    return handle


def test_anonymous_api_calls_get_a_json_401_not_a_login_redirect(case) -> None:
    response = APIClient().get(reverse("api_batch_detail", args=[1]))
    assert response.status_code == 401
    assert "credentials" in response.json()["detail"]


def test_an_integrator_submits_a_batch_with_a_token_and_reads_the_reasons(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    response = api.post(
        reverse("api_case_batches", args=[case.pk]),
        {
            "files": [
                _upload("a.jpg", noisy_jpeg_bytes()),
                _upload("b.jpg", noisy_jpeg_bytes()),
                _upload("readme.jpg", b"just text"),
            ],
            "priority": "stat",
        },
        format="multipart",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued"
    assert body["priority"] == "stat"
    assert (body["total_images"], body["rejected_files"]) == (2, 1)
    assert body["rejected"][0]["original_name"] == "readme.jpg"
    assert body["rejected"][0]["reject_reason"]
    assert body["differential"] is None

    processing.process_batch(batch_id=body["id"])
    done = api.get(reverse("api_batch_detail", args=[body["id"]])).json()
    assert done["status"] == "done"
    assert sum(row["count"] for row in done["differential"]) == 2


def test_a_batch_without_files_is_refused_with_a_field_error(api: APIClient, case) -> None:
    response = api.post(reverse("api_case_batches", args=[case.pk]), {}, format="multipart")
    assert response.status_code == 400
    assert "files" in response.json()


def test_another_labs_case_and_batch_are_not_found_through_the_api(
    api: APIClient, tiny_model: ModelVersion
) -> None:
    foreign = CaseFactory.create()
    batch = services.submit_batch(
        case=foreign, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    assert api.get(reverse("api_batch_detail", args=[batch.pk])).status_code == 404
    response = api.post(
        reverse("api_case_batches", args=[foreign.pk]),
        {"files": [_upload("a.jpg", noisy_jpeg_bytes())]},
        format="multipart",
    )
    assert response.status_code == 404
    assert Batch.objects.filter(case=foreign).count() == 1


def test_cancelling_through_the_api_and_again_is_a_conflict(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    response = api.post(reverse("api_batch_cancel", args=[batch.pk]))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    again = api.post(reverse("api_batch_cancel", args=[batch.pk]))
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]
