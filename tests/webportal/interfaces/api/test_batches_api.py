from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory
from webportal.cases import services
from webportal.cases.models import Batch, Cell, Image, ModelVersion
from webportal.pipeline import batch_job

pytestmark = pytest.mark.django_db

FIELD = Path(__file__).resolve().parents[4] / "samples" / "fields" / "BloodImage_00000.jpg"


def _upload(name: str, content: bytes) -> io.BytesIO:
    handle = io.BytesIO(content)
    handle.name = name
    return handle


def test_anonymous_api_calls_get_a_json_401_not_a_login_redirect(case) -> None:
    response = APIClient().get(reverse("api:batch_detail", args=[1]))
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_integrator_submits_a_batch_with_a_token_and_reads_the_reasons(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    response = api.post(
        reverse("api:case_batches", args=[case.pk]),
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
    assert response["Location"] == body["url"]
    assert body["status"] == "queued"
    assert body["priority"] == "stat"
    assert body["image_kind"] == "auto"
    assert (body["total_images"], body["rejected_files"]) == (2, 1)
    assert body["rejected"][0]["original_name"] == "readme.jpg"
    assert body["rejected"][0]["reject_reason"]
    assert body["differential"] is None
    assert body["report_url"] is None

    batch_job.process_batch(batch_id=body["id"])
    done = api.get(reverse("api:batch_detail", args=[body["id"]])).json()
    assert done["status"] == "done"
    assert done["progress_percent"] == 100
    assert sum(row["count"] for row in done["differential"]) == 2
    assert done["report_url"].endswith(f"/api/v1/batches/{body['id']}/report/")


def test_a_batch_without_files_is_refused_with_a_field_error(api: APIClient, case) -> None:
    response = api.post(reverse("api:case_batches", args=[case.pk]), {}, format="multipart")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert "files" in body["fields"]


def test_a_batch_sent_as_json_is_an_unsupported_media_type(api: APIClient, case) -> None:
    response = api.post(reverse("api:case_batches", args=[case.pk]), {"files": []}, format="json")
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_an_upload_above_the_size_limit_is_refused_with_413(
    api: APIClient, case, tiny_model: ModelVersion, settings
) -> None:
    settings.API_UPLOAD_MAX_BYTES = 1000
    response = api.post(
        reverse("api:case_batches", args=[case.pk]),
        {"files": [_upload("a.jpg", noisy_jpeg_bytes((200, 200)))]},
        format="multipart",
    )
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert not Batch.objects.exists()


def test_another_labs_case_and_batch_are_not_found_through_the_api(
    api: APIClient, tiny_model: ModelVersion
) -> None:
    foreign = CaseFactory.create()
    batch = services.submit_batch(
        case=foreign, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    assert api.get(reverse("api:batch_detail", args=[batch.pk])).status_code == 404
    response = api.post(
        reverse("api:case_batches", args=[foreign.pk]),
        {"files": [_upload("a.jpg", noisy_jpeg_bytes())]},
        format="multipart",
    )
    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "detail": "Not found.", "fields": {}}
    assert Batch.objects.filter(case=foreign).count() == 1


def test_cancelling_through_the_api_and_again_is_a_conflict(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    response = api.post(reverse("api:batch_cancel", args=[batch.pk]))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    again = api.post(reverse("api:batch_cancel", args=[batch.pk]))
    assert again.status_code == 409
    assert again.json()["error"] == "conflict"
    assert "already cancelled" in again.json()["detail"]


def test_a_retried_upload_with_the_same_idempotency_key_makes_one_batch(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    content = noisy_jpeg_bytes()
    url = reverse("api:case_batches", args=[case.pk])

    def send():
        return api.post(
            url,
            {"files": [_upload("a.jpg", content)]},
            format="multipart",
            HTTP_IDEMPOTENCY_KEY="upload-7",
        )

    first, retry = send(), send()
    assert (first.status_code, retry.status_code) == (201, 200)
    assert retry.json()["id"] == first.json()["id"]
    assert retry["Idempotent-Replayed"] == "true"
    assert Batch.objects.filter(case=case).count() == 1


def test_the_same_idempotency_key_with_other_files_is_a_conflict(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    url = reverse("api:case_batches", args=[case.pk])
    for expected in (201, 409):
        response = api.post(
            url,
            {"files": [_upload("a.jpg", noisy_jpeg_bytes())]},
            format="multipart",
            HTTP_IDEMPOTENCY_KEY="upload-8",
        )
        assert response.status_code == expected
    assert "different upload" in response.json()["detail"]
    assert Batch.objects.filter(case=case).count() == 1


def test_batches_are_listed_in_pages_with_a_next_link(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    for _ in range(3):
        services.submit_batch(
            case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
        )
    page = api.get(reverse("api:batch_list"), {"page_size": 2}).json()
    assert page["count"] == 3
    assert len(page["results"]) == 2
    assert page["next"].startswith("http://testserver/api/v1/batches/?")
    rest = api.get(page["next"]).json()
    assert len(rest["results"]) == 1
    assert rest["next"] is None


def test_the_first_api_paths_still_answer_as_their_v1_twins(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    old = api.get(f"/api/batches/{batch.pk}/")
    new = api.get(f"/api/v1/batches/{batch.pk}/")
    assert old.status_code == new.status_code == 200
    assert old.json() == new.json()
    assert api.post(f"/api/batches/{batch.pk}/cancel/").json()["status"] == "cancelled"


def test_more_files_than_the_limit_is_a_json_error_stating_it(
    api: APIClient, case, tiny_model: ModelVersion, settings
) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    files = [_upload(f"cell{i}.jpg", noisy_jpeg_bytes()) for i in range(4)]

    response = api.post(
        reverse("api:case_batches", args=[case.pk]), {"files": files}, format="multipart"
    )

    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "too_large"
    assert "at most 3 files can be sent at once" in response.json()["detail"]
    assert not Batch.objects.filter(case=case).exists()


@pytest.mark.parametrize(
    ("image_kind", "name", "content", "kind"),
    [
        # A 48x48 image is a single cell by its size; forced, it is a field to locate in.
        ("field", "small.jpg", noisy_jpeg_bytes(), Image.Kind.FIELD),
        # A 640x480 camera field is a field by its size; forced, it is one cell.
        ("cell", "field.jpg", FIELD.read_bytes(), Image.Kind.CELL),
    ],
)
def test_an_integrator_forces_the_image_kind_of_a_batch(
    api: APIClient, case, tiny_model: ModelVersion, image_kind, name, content, kind
) -> None:
    response = api.post(
        reverse("api:case_batches", args=[case.pk]),
        {"files": [_upload(name, content)], "image_kind": image_kind},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["image_kind"] == image_kind
    batch = Batch.objects.get(pk=body["id"])
    assert batch.image_kind == image_kind
    (image,) = batch.images.all()
    assert image.kind == kind
    # A single cell is its one Cell at once; a field's cells come from the worker.
    assert Cell.objects.filter(image=image).count() == (1 if kind == Image.Kind.CELL else 0)


def test_without_an_image_kind_the_size_decides_per_image(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    response = api.post(
        reverse("api:case_batches", args=[case.pk]),
        {"files": [_upload("small.jpg", noisy_jpeg_bytes()), _upload("f.jpg", FIELD.read_bytes())]},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    kinds = dict(Image.objects.filter(batch_id=response.json()["id"]).values_list(
        "original_name", "kind"
    ))  # fmt: skip
    assert kinds == {"small.jpg": Image.Kind.CELL, "f.jpg": Image.Kind.FIELD}


def test_an_unknown_image_kind_is_refused_with_the_kinds_it_may_be(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    response = api.post(
        reverse("api:case_batches", args=[case.pk]),
        {"files": [_upload("a.jpg", noisy_jpeg_bytes())], "image_kind": "smear"},
        format="multipart",
    )
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    (message,) = body["fields"]["image_kind"]
    assert '"smear" is not an image kind' in message
    assert "auto, field, cell" in message
    assert not Batch.objects.exists()


def test_the_same_idempotency_key_with_another_image_kind_is_a_conflict(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    content = noisy_jpeg_bytes()
    url = reverse("api:case_batches", args=[case.pk])
    statuses = [
        api.post(
            url,
            {"files": [_upload("a.jpg", content)], "image_kind": kind},
            format="multipart",
            HTTP_IDEMPOTENCY_KEY="upload-9",
        ).status_code
        for kind in ("field", "field", "cell")
    ]
    assert statuses == [201, 200, 409]
    assert Batch.objects.filter(case=case).get().image_kind == "field"
