"""The review gallery, the reclassify endpoint and the cell page, through the test client."""

from __future__ import annotations

import json
import re
import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.factories import CaseFactory, MembershipFactory, allow_small_counts, classified_batch
from webportal.accounts.models import Role
from webportal.cases.models import Cell, Review
from webportal.reports.differential import UNIDENTIFIED


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _mixed(n: int) -> list[tuple[str, float]]:
    labels = ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "platelet"]
    return [(labels[i % len(labels)], 0.3 if i % 10 == 0 else 0.9) for i in range(n)]


@pytest.fixture
def batch(lab_case, model_version):
    allow_small_counts(lab_case.lab)  # a small batch: the minimum has its own tests
    return classified_batch(case=lab_case, model_version=model_version, predictions=_mixed(20))


def _post(client: Client, batch, ids, label: str):
    return client.post(
        reverse("cases:reclassify", args=[batch.pk]),
        data=json.dumps({"cells": ids, "label": label}),
        content_type="application/json",
    )


def test_the_gallery_groups_cells_unidentified_first_then_by_count(batch, people) -> None:
    page = _client(people[Role.PATHOLOGIST]).get(reverse("cases:review", args=[batch.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    shown = re.findall(r'<section class="group( unidentified)?" data-label="([^"]+)"', html)
    # _mixed(20): 2 neutrophils under the threshold, 2 above; 4 of each other class. Empty
    # groups are rendered hidden ("group empty") so that a tile can move into them.
    assert [label for _, label in shown] == [
        UNIDENTIFIED, "eosinophil", "lymphocyte", "monocyte", "platelet", "neutrophil",
    ]  # fmt: skip
    assert html.count('<li class="tile') == 20
    assert "review.js" in html
    assert "<script>" not in html  # no inline script under the Content-Security-Policy


def test_reclassifying_returns_the_new_labels_and_the_recounted_differential(batch, people) -> None:
    ids = list(Cell.objects.filter(image__batch=batch).values_list("pk", flat=True)[:4])
    response = _post(_client(people[Role.STAFF]), batch, ids, "basophil")
    assert response.status_code == 200
    body = response.json()
    assert (body["label"], sorted(body["cells"])) == ("basophil", sorted(ids))
    assert 'data-label="basophil"><td>basophil</td><td class="num">4</td>' in body["differential"]
    assert Review.objects.filter(cell_id__in=ids, label="basophil").count() == 4


@pytest.mark.parametrize(
    ("role", "status"), [(Role.ADMIN, 403), (Role.STAFF, 200), (Role.PATHOLOGIST, 200)]
)
def test_the_endpoint_answers_a_role_refusal_with_403_and_its_reason(
    batch, people, role, status
) -> None:
    ids = list(Cell.objects.filter(image__batch=batch).values_list("pk", flat=True)[:1])
    response = _post(_client(people[role]), batch, ids, "monocyte")
    assert response.status_code == status
    if status == 403:
        assert "review cells" in response.json()["error"]


def test_bad_input_gets_a_400_with_a_message_and_changes_nothing(batch, people) -> None:
    client = _client(people[Role.STAFF])
    bad = client.post(
        reverse("cases:reclassify", args=[batch.pk]), data="nope", content_type="application/json"
    )
    assert bad.status_code == 400
    ids = list(Cell.objects.filter(image__batch=batch).values_list("pk", flat=True)[:1])
    unknown = _post(client, batch, ids, "unicorn")
    assert unknown.status_code == 400
    assert "not in the lab's cell vocabulary" in unknown.json()["error"]
    assert not Review.objects.exists()


def test_another_labs_user_gets_404_on_every_review_page(batch) -> None:
    stranger = _client(MembershipFactory.create(role=Role.PATHOLOGIST).user)
    cell = Cell.objects.filter(image__batch=batch).first()
    assert cell is not None
    report = batch.reports.get()
    for url in [
        reverse("cases:review", args=[batch.pk]),
        reverse("cases:cell", args=[cell.pk]),
        reverse("cases:cell_crop", args=[cell.pk]),
        reverse("cases:cell_heatmap", args=[cell.pk]),
        reverse("reports:report", args=[report.pk]),
        reverse("reports:pdf", args=[report.pk]),
    ]:
        assert stranger.get(url).status_code == 404, url
    assert _post(stranger, batch, [cell.pk], "monocyte").status_code == 404
    assert stranger.post(reverse("reports:edit", args=[report.pk]), {"sign": "1"}).status_code == (
        404
    )
    assert not Review.objects.exists()


def test_the_cell_page_shows_probabilities_threshold_and_history(batch, people) -> None:
    cell = Cell.objects.filter(image__batch=batch, predictions__confidence__lt=0.5).first()
    assert cell is not None
    client = _client(people[Role.PATHOLOGIST])
    html = client.get(reverse("cases:cell", args=[cell.pk])).content.decode()
    assert "threshold 50.0%" in html
    assert "below, so unidentified" in html
    assert html.count("<meter") == 8
    assert client.post(
        reverse("cases:cell", args=[cell.pk]), {"label": "monocyte"}
    ).status_code == (302)
    html = client.get(reverse("cases:cell", args=[cell.pk])).content.decode()
    assert people[Role.PATHOLOGIST].username in html
    assert "<td>monocyte</td>" in html


@pytest.mark.slow
def test_a_2000_cell_batch_reviews_fast_in_a_fixed_number_of_queries(
    lab_case, model_version, people, capsys
) -> None:
    """The figures of issue 11: the review page's server time and queries for 2,000 cells,
    and a bulk reclassification of 500 cells in one request."""
    client = _client(people[Role.PATHOLOGIST])
    small = classified_batch(
        case=CaseFactory.create(lab=lab_case.lab), model_version=model_version,
        predictions=_mixed(20),
    )  # fmt: skip
    big = classified_batch(case=lab_case, model_version=model_version, predictions=_mixed(2000))

    def page_queries(batch) -> tuple[int, float]:
        with CaptureQueriesContext(connection) as captured:
            start = time.perf_counter()
            response = client.get(reverse("cases:review", args=[batch.pk]))
            elapsed = time.perf_counter() - start
        assert response.status_code == 200
        return len(captured.captured_queries), elapsed

    page_queries(big)  # warm-up: template compilation, first connection
    small_queries, _ = page_queries(small)
    big_queries, page_seconds = page_queries(big)
    assert big_queries == small_queries  # no query per cell
    assert page_seconds < 5

    ids = list(Cell.objects.filter(image__batch=big).values_list("pk", flat=True)[:500])
    with CaptureQueriesContext(connection) as captured:
        start = time.perf_counter()
        response = _post(client, big, ids, "monocyte")
        bulk_seconds = time.perf_counter() - start
    assert response.status_code == 200
    assert len(response.json()["cells"]) == 500
    assert Review.objects.filter(cell__image__batch=big).count() == 500
    assert bulk_seconds < 10
    with capsys.disabled():
        print(
            f"\n2,000-cell review page: {page_seconds * 1000:.0f} ms, {big_queries} queries "
            f"(20 cells: {small_queries}); reclassify 500 cells: {bulk_seconds * 1000:.0f} ms, "
            f"{len(captured.captured_queries)} queries"
        )


def test_the_heatmap_is_asked_of_a_worker_once_then_served_from_storage(
    member, case, tiny_model, monkeypatch
) -> None:
    import io as _io

    from PIL import Image as PILImage

    from tests.conftest import noisy_jpeg_bytes
    from webportal.cases import services
    from webportal.celery import EXPLAIN_CELL_TASK, app
    from webportal.pipeline import batch_job, explain

    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", _io.BytesIO(noisy_jpeg_bytes((64, 48))))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    cell = Cell.objects.get(image__batch=batch)
    sent: list[tuple[str, tuple[int, ...]]] = []
    monkeypatch.setattr(app, "send_task", lambda name, args, **_: sent.append((name, args)))
    client = _client(member.user)
    url = reverse("cases:cell_heatmap", args=[cell.pk])

    first = client.get(url)
    again = client.get(url)
    assert (first.status_code, again.status_code) == (202, 202)
    assert sent == [(EXPLAIN_CELL_TASK, (cell.pk,))]  # asked once, not on every poll

    name = explain.compute_heatmap(cell_id=cell.pk)  # what the worker's task does
    assert name is not None
    ready = client.get(url)
    assert ready.status_code == 200
    assert ready["Content-Type"] == "image/png"
    with PILImage.open(_io.BytesIO(ready.content)) as picture:
        assert picture.size == (tiny_model.input_size, tiny_model.input_size)

    def no_second_computation(*args, **kwargs):
        raise AssertionError("the heatmap was computed again")

    monkeypatch.setattr(explain, "explain_png", no_second_computation)
    assert explain.compute_heatmap(cell_id=cell.pk) == name  # a repeated message
    assert client.get(reverse("cases:cell_crop", args=[cell.pk])).status_code == 200


def test_a_cells_thumbnail_is_its_fitted_copy_served_as_png(member, case, tiny_model) -> None:
    import io as _io

    import numpy as np
    from PIL import Image as PILImage

    from tests.conftest import noisy_jpeg_bytes
    from webportal.cases import services

    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", _io.BytesIO(noisy_jpeg_bytes((64, 48))))]
    )
    cell = Cell.objects.select_related("image").get(image__batch=batch)
    assert str(cell.image.model_input.name).endswith(".bmp")  # the worker's uncompressed copy
    response = _client(member.user).get(reverse("cases:cell_crop", args=[cell.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    with (
        PILImage.open(_io.BytesIO(response.content)) as served,
        cell.image.model_input.open("rb") as handle,
        PILImage.open(handle) as stored,
    ):
        assert served.format == "PNG"
        assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(stored.convert("RGB")))
