from __future__ import annotations

import io

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import TINY_CLASSES, noisy_jpeg_bytes
from tests.factories import MembershipFactory
from tests.webportal.conftest import bearer
from webportal.accounts.models import Role
from webportal.api import tokens
from webportal.api.models import WebhookDelivery
from webportal.audit.models import AuditEvent
from webportal.cases import services
from webportal.cases.models import ModelVersion
from webportal.notifications import webhooks
from webportal.pipeline import batch_job
from webportal.reports import fhir

pytestmark = pytest.mark.django_db


@pytest.fixture
def done_batch(member, tiny_model: ModelVersion):
    case = services.create_case(lab=member.lab, created_by=None, accession_number="S-1")
    batch = services.submit_batch(
        case=case,
        created_by=None,
        files=[(f"{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(5)],
    )
    batch_job.process_batch(batch_id=batch.pk)
    return batch


@pytest.fixture
def pathologist_api(member) -> APIClient:
    """A pathologist's own personal token (made by them): it acts as them."""
    pathologist = MembershipFactory.create(lab=member.lab, role=Role.PATHOLOGIST)
    issued = tokens.issue_personal_token(user=pathologist.user, lab=member.lab)
    return bearer(issued.plaintext)


@pytest.fixture
def staff_token(member) -> tokens.IssuedToken:
    """A technologist's personal token: first review through the API."""
    staff = MembershipFactory.create(lab=member.lab, role=Role.STAFF)
    return tokens.issue_personal_token(user=staff.user, lab=member.lab)


@pytest.fixture
def staff_api(staff_token: tokens.IssuedToken) -> APIClient:
    return bearer(staff_token.plaintext)


def test_cells_are_paginated_with_prediction_probabilities_and_filters(
    api: APIClient, done_batch
) -> None:
    url = reverse("api:batch_cells", args=[done_batch.pk])
    page = api.get(url, {"page_size": 2}).json()
    assert page["count"] == 5
    assert page["next"] is not None
    cell = page["results"][0]
    assert cell["predicted"] in TINY_CLASSES
    assert set(cell["probabilities"]) == set(TINY_CLASSES)
    assert cell["current_label"] == cell["predicted"] or cell["current_label"] == "unidentified"
    assert cell["reviews"] == []
    label = cell["current_label"]
    same = api.get(url, {"label": label}).json()["results"]
    assert same
    assert {c["current_label"] for c in same} == {label}
    assert api.get(url, {"reviewed": "true"}).json()["count"] == 0
    assert api.get(url, {"min_confidence": "2"}).json()["count"] == 0
    assert api.get(url, {"min_confidence": "x"}).status_code == 400


def test_a_review_through_a_persons_token_changes_the_current_label_and_is_audited(
    staff_api: APIClient, done_batch, staff_token
) -> None:
    api = staff_api
    cell = api.get(reverse("api:batch_cells", args=[done_batch.pk])).json()["results"][0]
    other = next(label for label in TINY_CLASSES if label != cell["predicted"])
    response = api.post(cell["url"] + "reviews/", {"label": other}, format="json")
    assert response.status_code == 201, response.content
    (reviewed,) = response.json()
    assert reviewed["current_label"] == other
    assert reviewed["reviews"][0]["reviewer"] == staff_token.token.user.username
    assert reviewed["reviews"][0]["reviewer_role"] == Role.STAFF
    assert AuditEvent.objects.filter(action="cell.reviewed", object_id=str(cell["id"])).exists()
    history = api.get(cell["url"] + "reviews/").json()
    assert [review["label"] for review in history] == [other]
    reviewed_only = api.get(reverse("api:batch_cells", args=[done_batch.pk]), {"reviewed": "1"})
    assert [c["id"] for c in reviewed_only.json()["results"]] == [cell["id"]]
    refused = api.post(cell["url"] + "reviews/", {"label": "dragon"}, format="json")
    assert refused.status_code == 409
    assert "not in the lab's cell vocabulary" in refused.json()["detail"]


def test_a_service_token_never_reviews_relabels_edits_signs_or_amends(
    api: APIClient, done_batch
) -> None:
    cells = api.get(reverse("api:batch_cells", args=[done_batch.pk])).json()["results"]
    attempts = [
        api.post(cells[0]["url"] + "reviews/", {"label": TINY_CLASSES[0]}, format="json"),
        api.post(
            reverse("api:batch_reviews", args=[done_batch.pk]),
            {"cells": [cells[0]["id"]], "label": TINY_CLASSES[1]},
            format="json",
        ),
        api.patch(reverse("api:batch_report", args=[done_batch.pk]), {"comment": "x"},
                  format="json"),
        api.post(reverse("api:batch_report_sign", args=[done_batch.pk]), {}, format="json"),
        api.post(reverse("api:batch_report_amend", args=[done_batch.pk]), {"reason": "x"},
                 format="json"),
    ]  # fmt: skip
    for response in attempts:
        assert response.status_code == 403, response.content
        assert "service (integrator) token may not" in response.json()["detail"]
    assert not AuditEvent.objects.filter(action="cell.reviewed").exists()


def test_many_cells_are_reviewed_at_once_and_a_foreign_cell_is_not_found(
    staff_api: APIClient, done_batch
) -> None:
    api = staff_api
    ids = list(done_batch.images.values_list("cells__id", flat=True))
    response = api.post(
        reverse("api:batch_reviews", args=[done_batch.pk]),
        {"cells": ids[:3], "label": "not classed"},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert {cell["current_label"] for cell in response.json()} == {"not classed"}
    foreign = api.post(
        reverse("api:batch_reviews", args=[done_batch.pk]),
        {"cells": [ids[0], 10**9], "label": "not classed"},
        format="json",
    )
    assert foreign.status_code == 404


def test_the_cell_image_has_an_etag_and_answers_304(api: APIClient, done_batch) -> None:
    cell = api.get(reverse("api:batch_cells", args=[done_batch.pk])).json()["results"][0]
    image = api.get(cell["image_url"])
    assert image.status_code == 200
    assert image["Content-Type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    again = api.get(cell["image_url"], HTTP_IF_NONE_MATCH=image["ETag"])
    assert again.status_code == 304


def test_the_report_as_pdf_by_accept_header_and_by_path(api: APIClient, done_batch) -> None:
    url = reverse("api:batch_report", args=[done_batch.pk])
    negotiated = api.get(url, HTTP_ACCEPT="application/pdf")
    assert negotiated.status_code == 200
    assert negotiated["Content-Type"] == "application/pdf"
    assert negotiated.content.startswith(b"%PDF")
    explicit = api.get(reverse("api:batch_report_pdf", args=[done_batch.pk]))
    assert explicit.content.startswith(b"%PDF")
    assert AuditEvent.objects.filter(action="report.downloaded").count() == 2


def test_an_integrator_may_not_sign_but_a_pathologists_token_signs_and_amends(
    api: APIClient,
    pathologist_api: APIClient,
    done_batch,
    member,
    monkeypatch,
    django_capture_on_commit_callbacks,
) -> None:
    monkeypatch.setattr(webhooks, "_send", lambda delivery_id, countdown=0: None)
    webhooks.register_endpoint(lab=member.lab, url="https://lis.example/hook")
    sign = reverse("api:batch_report_sign", args=[done_batch.pk])
    refused = api.post(sign, {}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"] == "permission_denied"
    # Every cell needs a class before signing: classify the unidentified ones.
    cells = api.get(reverse("api:batch_cells", args=[done_batch.pk]), {"label": "unidentified"})
    unidentified = [cell["id"] for cell in cells.json()["results"]]
    if unidentified:
        pathologist_api.post(
            reverse("api:batch_reviews", args=[done_batch.pk]),
            {"cells": unidentified, "label": TINY_CLASSES[0]},
            format="json",
        )
    with django_capture_on_commit_callbacks(execute=True):
        signed = pathologist_api.post(
            sign,
            {"wbc_count": "7.50", "comment": "ok", "below_minimum_reason": "Five test cells."},
            format="json",
        )
    assert signed.status_code == 200, signed.content
    assert (signed.json()["status"], signed.json()["wbc_count"]) == ("final", "7.50")
    again = pathologist_api.post(sign, {}, format="json")
    assert again.status_code == 409
    amend = reverse("api:batch_report_amend", args=[done_batch.pk])
    assert pathologist_api.post(amend, {}, format="json").status_code == 400
    with django_capture_on_commit_callbacks(execute=True):
        amended = pathologist_api.post(amend, {"reason": "typo in comment"}, format="json")
    assert amended.status_code == 201, amended.content
    assert (amended.json()["version"], amended.json()["status"]) == (2, "amended")
    versions = api.get(reverse("api:batch_reports", args=[done_batch.pk])).json()["results"]
    assert [(v["version"], v["superseded"]) for v in versions] == [(2, False), (1, True)]
    bundle = api.get(reverse("api:batch_report_fhir", args=[done_batch.pk])).json()
    (diagnostic,) = fhir.resources_of(bundle, "DiagnosticReport")
    assert diagnostic["status"] == "amended"
    observations = fhir.resources_of(bundle, "Observation")
    assert any("-absolute-" in obs["id"] for obs in observations)
    events = list(WebhookDelivery.objects.order_by("id").values_list("event", flat=True))
    assert events == ["report.final", "report.amended"]


def test_the_preliminary_report_is_edited_through_the_api(staff_api: APIClient, done_batch) -> None:
    api = staff_api
    url = reverse("api:batch_report", args=[done_batch.pk])
    edited = api.patch(url, {"comment": "smudged slide", "wbc_count": "5.1"}, format="json")
    assert edited.status_code == 200, edited.content
    assert (edited.json()["comment"], edited.json()["wbc_count"]) == ("smudged slide", "5.10")
