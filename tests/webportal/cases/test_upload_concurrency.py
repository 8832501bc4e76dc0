"""An upload holds no database lock while its files are validated (SQLite: one writer)."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from django.core.files.storage import default_storage
from django.db import connection

from tests.conftest import noisy_jpeg_bytes
from tests.factories import LabFactory
from webportal.cases import services
from webportal.cases.models import Batch, Case, Image, ModelVersion
from webportal.pipeline import batch_job, classifiers

pytestmark = pytest.mark.django_db(transaction=True)

# Files in the large upload; the closing figures were measured with 2000:
# UPLOAD_CONTENTION_FILES=2000 pytest tests/webportal/cases/test_upload_concurrency.py -s -k other
UPLOAD_FILES = int(os.environ.get("UPLOAD_CONTENTION_FILES", "40"))


def _files_pausing_midway(
    count: int, *, midway: threading.Event, go_on: threading.Event
) -> Iterator[tuple[str, BinaryIO]]:
    """An upload whose validation stops halfway until the test says go on."""
    for i in range(count):
        if i == count // 2:
            midway.set()
            assert go_on.wait(timeout=60), "the test never let the upload go on"
        yield f"cell-{i}.jpg", io.BytesIO(noisy_jpeg_bytes())


def test_other_writes_go_through_while_a_large_upload_is_being_validated(
    tiny_model: ModelVersion, case: Case
) -> None:
    other_batch = services.submit_batch(
        case=case,
        created_by=None,
        files=[(f"o{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(3)],
    )
    classifiers.load_classifier(model_version=tiny_model)  # as a started worker has it
    midway, go_on = threading.Event(), threading.Event()
    uploaded: list[Batch] = []
    failure: list[BaseException] = []

    def upload() -> None:
        try:
            uploaded.append(
                services.submit_batch(
                    case=case,
                    created_by=None,
                    files=_files_pausing_midway(UPLOAD_FILES, midway=midway, go_on=go_on),
                )
            )
        except BaseException as exc:
            failure.append(exc)
        finally:
            connection.close()

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert midway.wait(timeout=60)
        assert not failure
        started = time.monotonic()
        # Another lab's request writes a case; a worker classifies a batch (its progress rows).
        other_lab = LabFactory.create()
        services.create_case(lab=other_lab, created_by=None, accession_number="OTHER-1")
        case_seconds = time.monotonic() - started
        outcome = batch_job.process_batch(batch_id=other_batch.pk)
        waited = time.monotonic() - started
    finally:
        go_on.set()
        uploader.join(timeout=120)
    upload_seconds = time.monotonic() - started
    print(
        f"\nupload of {UPLOAD_FILES} files: another lab's case written in {case_seconds:.2f}s, "
        f"a worker's batch of 3 done in {waited - case_seconds:.2f}s, both while the upload was "
        f"halfway; the upload finished {upload_seconds:.1f}s after"
    )
    assert not failure, failure
    assert outcome.status == Batch.Status.DONE
    assert waited < 10, f"the other writes waited {waited:.1f}s for the upload"
    assert Case.objects.filter(lab=other_lab, accession_number="OTHER-1").exists()
    assert uploaded[0].total_images == UPLOAD_FILES
    assert Image.objects.filter(batch=uploaded[0], status=Image.Status.OK).count() == UPLOAD_FILES


def test_a_failed_upload_leaves_no_file_behind(tiny_model: ModelVersion, case: Case) -> None:
    def files() -> Iterator[tuple[str, BinaryIO]]:
        for i in range(3):
            yield f"cell-{i}.jpg", io.BytesIO(noisy_jpeg_bytes())
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        services.submit_batch(case=case, created_by=None, files=files())
    assert not Batch.objects.exists()
    stored = Path(default_storage.path(""))
    assert [path for path in stored.rglob("*") if path.is_file()] == []


def test_files_of_an_upload_whose_rows_roll_back_are_deleted(
    tiny_model: ModelVersion, case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = services.prepare_upload(
        model_version=tiny_model,
        files=[(f"c{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(2)],
    )
    names = list(prepared.stored_names)
    assert len(names) == 4
    assert all(default_storage.exists(name) for name in names)

    def refuse(**_: object) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(services, "record_event", refuse)
    with pytest.raises(RuntimeError):
        services.submit_prepared_batch(case=case, created_by=None, prepared=prepared)
    assert not Batch.objects.exists()
    assert not any(default_storage.exists(name) for name in names)
