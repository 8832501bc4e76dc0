"""The batch guard end to end through a real Celery worker process: a batch unlike the model's
validation cells is flagged and auto-accepts nothing; a batch like them is not flagged."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import LazySettings
from django.test import Client
from django.urls import reverse

from tests.conftest import GUARDED_THRESHOLD, cell_pngs
from tests.services import celery_worker, wait_until
from webportal.cases import batch_check, services
from webportal.cases.models import Batch, ModelVersion, Prediction
from webportal.cases.selectors import batch_cells
from webportal.celery import use_broker
from webportal.reports.differential import UNIDENTIFIED

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def _finished(batch_id: int) -> bool:
    return Batch.objects.get(pk=batch_id).is_finished


def test_a_real_worker_flags_a_shifted_batch_and_auto_accepts_none_of_its_cells(
    guarded_model: ModelVersion, case, member, tmp_path: Path, settings: LazySettings
) -> None:
    folder = tmp_path / "broker"
    use_broker("filesystem://", folder)  # this process sends where the worker listens
    settings.BATCH_SHARD_IMAGES = 8  # split here, at the upload: three shards per batch
    with celery_worker(
        broker_url="filesystem://",
        broker_folder=folder,
        log_path=tmp_path / "worker.log",
        # Chunks of 8: the verdict must be the whole batch's, not a chunk's or a shard's.
        extra_env={"INFERENCE_CHUNK_SIZE": "8"},
    ):
        shifted = services.submit_batch(
            case=case, created_by=None, files=cell_pngs(20, seed=4, shifted=True, prefix="away")
        )
        alike = services.submit_batch(
            case=case, created_by=None, files=cell_pngs(20, seed=3, prefix="home")
        )
        for batch in (shifted, alike):
            wait_until(lambda b=batch: _finished(b.pk), timeout=180, what="the batches to finish")
    log = (tmp_path / "worker.log").read_text()
    shifted.refresh_from_db()
    alike.refresh_from_db()
    assert shifted.status == alike.status == Batch.Status.DONE, log[-3000:]

    # The shifted batch: flagged, with its figures, and not one cell auto-accepted although
    # every prediction is above the model's threshold.
    assert shifted.ood_check == Batch.Check.FLAGGED, log[-3000:]
    assert shifted.ood_score is not None
    assert shifted.ood_threshold is not None
    assert shifted.ood_score > shifted.ood_threshold
    assert shifted.ood_cells_checked == 20
    assert Prediction.objects.filter(cell__image__batch=shifted).count() == 20
    states = batch_cells(batch=shifted)
    assert all(s.confidence is not None and s.confidence >= GUARDED_THRESHOLD for s in states)
    assert [s.current for s in states] == [UNIDENTIFIED] * 20
    report = shifted.reports.get()
    assert {r["label"]: r["count"] for r in report.differential}[UNIDENTIFIED] == 20
    assert report.flags[0]["code"] == batch_check.FLAG_CODE

    # The batch like the validation cells: not flagged, its confident cells accepted.
    assert alike.ood_check == Batch.Check.PASSED
    assert alike.ood_score is not None
    assert alike.ood_threshold is not None
    assert alike.ood_score <= alike.ood_threshold
    assert all(s.current == s.predicted for s in batch_cells(batch=alike))

    # The lab reads why on the batch page.
    client = Client()
    client.force_login(member.user)
    page = client.get(reverse("cases:batch_detail", args=[shifted.pk])).content.decode()
    assert batch_check.HEADLINE in page
    assert f"{shifted.ood_score:.2f}" in page
