"""Case and batch services: every write to clinical records goes through here.

Views, the API and Celery tasks stay thin and call these keyword-only functions.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from PIL import Image as PILImage

from ml.checkpoint import read_metadata, sha256_of
from ml.inference import CellPrediction, Classifier
from webportal.accounts.models import Lab
from webportal.cases.models import Batch, Case, Cell, Image, ModelVersion, Patient, Prediction
from webportal.cases.uploads import AcceptedImage, UploadLimits, inspect_uploads

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request that cannot be carried out, with a message fit to show the user."""


# --- model registry -------------------------------------------------------------------------


def register_model(*, checkpoint_path: Path, name: str = "") -> ModelVersion:
    """Register a checkpoint file; registering the same file again returns the same row."""
    if not checkpoint_path.is_file():
        raise ServiceError(f"No checkpoint file at {checkpoint_path}")
    digest = sha256_of(checkpoint_path)
    existing = ModelVersion.objects.filter(checkpoint_sha256=digest).first()
    if existing is not None:
        return existing
    meta = read_metadata(checkpoint_path)
    with transaction.atomic():
        return ModelVersion.objects.create(
            name=name or checkpoint_path.stem,
            architecture=meta.arch,
            classes=list(meta.classes),
            checkpoint_path=str(checkpoint_path.resolve()),
            checkpoint_sha256=digest,
            input_size=meta.input_size,
            mean=list(meta.mean),
            std=list(meta.std),
            temperature=meta.temperature,
            threshold=meta.threshold,
            metrics=meta.metrics,
        )


def active_model_for(*, lab: Lab) -> ModelVersion:
    if lab.active_model is not None:
        return lab.active_model
    newest = ModelVersion.objects.order_by("-created_at", "-id").first()
    if newest is None:
        raise ServiceError(
            "No model is registered yet: run `python manage.py register_model PATH` first."
        )
    return newest


_classifiers: dict[str, Classifier] = {}


def load_classifier(*, model_version: ModelVersion) -> Classifier:
    """The classifier for a model version, loaded once per process and kept."""
    cached = _classifiers.get(model_version.checkpoint_sha256)
    if cached is not None:
        return cached
    path = Path(model_version.checkpoint_path)
    if not path.is_file():
        raise ServiceError(f"Checkpoint of {model_version} is missing at {path}")
    if sha256_of(path) != model_version.checkpoint_sha256:
        # A changed file would silently give predictions no registered version made.
        raise ServiceError(f"Checkpoint at {path} does not match the sha256 registered")
    classifier = Classifier.load(path)
    _classifiers[model_version.checkpoint_sha256] = classifier
    logger.info("loaded %s on %s", model_version, classifier.device)
    return classifier


def preload_classifiers() -> None:
    """Load every model a lab would use now, so the first batch does not wait for it."""
    wanted = {lab.active_model for lab in Lab.objects.select_related("active_model")}
    wanted.discard(None)
    newest = ModelVersion.objects.order_by("-created_at", "-id").first()
    if newest is not None:
        wanted.add(newest)
    for model_version in wanted:
        if model_version is not None:
            load_classifier(model_version=model_version)


# --- cases ----------------------------------------------------------------------------------


def cases_visible_to(*, user: User) -> QuerySet[Case]:
    return Case.objects.filter(lab__memberships__user=user).select_related("lab", "patient")


def batches_visible_to(*, user: User) -> QuerySet[Batch]:
    return Batch.objects.filter(case__lab__memberships__user=user).select_related(
        "case", "case__lab", "model_version"
    )


def create_case(
    *,
    lab: Lab,
    created_by: User | None,
    accession_number: str,
    patient_external_id: str = "",
    clinical_note: str = "",
) -> Case:
    accession_number = accession_number.strip()
    if not accession_number:
        raise ServiceError("An accession number is required.")
    with transaction.atomic():
        if Case.objects.filter(lab=lab, accession_number=accession_number).exists():
            raise ServiceError(f"Accession number {accession_number} already exists in {lab}.")
        patient = None
        if patient_external_id.strip():
            patient, _ = Patient.objects.get_or_create(
                lab=lab, external_id=patient_external_id.strip()
            )
        return Case.objects.create(
            lab=lab,
            patient=patient,
            accession_number=accession_number,
            clinical_note=clinical_note,
            created_by=created_by,
        )


def upload_limits() -> UploadLimits:
    return UploadLimits(
        max_file_bytes=settings.UPLOAD_MAX_FILE_BYTES, max_pixels=settings.UPLOAD_MAX_PIXELS
    )


def submit_batch(
    *,
    case: Case,
    created_by: User | None,
    files: Iterable[tuple[str, BinaryIO]],
    priority: str = Batch.Priority.ROUTINE,
) -> Batch:
    """Validate and store every file, then queue the batch once the rows are committed.

    A bad file becomes a rejected Image with its reason; the good files go on regardless.
    """
    from workers.tasks import process_batch  # the task calls back into this module

    model_version = active_model_for(lab=case.lab)
    with transaction.atomic():
        batch = Batch.objects.create(
            case=case, priority=priority, model_version=model_version, created_by=created_by
        )
        accepted = rejected = 0
        for result in inspect_uploads(files, limits=upload_limits()):
            if isinstance(result, AcceptedImage):
                _store_accepted_image(batch=batch, accepted=result)
                accepted += 1
            else:
                Image.objects.create(
                    batch=batch,
                    original_name=result.name,
                    status=Image.Status.REJECTED,
                    reject_reason=result.reason,
                )
                rejected += 1
        batch.total_images = accepted
        batch.rejected_files = rejected
        if accepted == 0:
            batch.status = Batch.Status.FAILED
            batch.error = "No file in the upload was an acceptable image; see the reasons below."
            batch.finished_at = timezone.now()
        batch.save()
        if accepted:
            process_batch.delay_on_commit(batch.pk)  # type: ignore[attr-defined]
    return batch


def _store_accepted_image(*, batch: Batch, accepted: AcceptedImage) -> None:
    image = Image(
        batch=batch,
        original_name=accepted.name,
        sha256=accepted.sha256,
        source_format=accepted.source_format,
        width=accepted.width,
        height=accepted.height,
        status=Image.Status.OK,
    )
    image.file.save(f"{uuid.uuid4().hex}.png", ContentFile(accepted.content), save=False)
    image.save()
    Cell.objects.create(image=image, box=None)


# --- the job --------------------------------------------------------------------------------


def process_batch(*, batch_id: int) -> None:
    """Classify every cell of a batch still without a prediction, then write the report.

    Safe to run twice: the claim is a conditional update, a redelivered run only does the
    cells still missing, and the unique constraint refuses a second prediction.
    """
    from webportal.reports.services import write_preliminary_report

    Batch.objects.filter(pk=batch_id, status=Batch.Status.QUEUED).update(
        status=Batch.Status.PROCESSING, started_at=timezone.now()
    )
    batch = Batch.objects.select_related("model_version").get(pk=batch_id)
    if batch.status != Batch.Status.PROCESSING:
        logger.info("batch %s is %s: nothing to do", batch_id, batch.status)
        return
    model_version = batch.model_version
    classifier = load_classifier(model_version=model_version)
    chunk_size = settings.INFERENCE_CHUNK_SIZE
    while True:
        if Batch.objects.filter(pk=batch_id, status=Batch.Status.CANCELLED).exists():
            logger.info("batch %s was cancelled", batch_id)
            return
        cells = list(
            Cell.objects.filter(image__batch_id=batch_id, image__status=Image.Status.OK)
            .exclude(predictions__model_version=model_version)
            .select_related("image")
            .order_by("id")[:chunk_size]
        )
        if not cells:
            break
        predictions = classifier.predict([_open_cell(cell) for cell in cells])
        _save_predictions(
            batch_id=batch_id, model_version=model_version, cells=cells, predictions=predictions
        )
    with transaction.atomic():
        batch = Batch.objects.select_for_update().get(pk=batch_id)
        if batch.status != Batch.Status.PROCESSING:
            return
        write_preliminary_report(batch=batch)
        batch.status = Batch.Status.DONE
        batch.finished_at = timezone.now()
        batch.save(update_fields=["status", "finished_at"])


def _open_cell(cell: Cell) -> PILImage.Image:
    with cell.image.file.open("rb") as handle, PILImage.open(handle) as stored:
        picture = stored.convert("RGB")
    if cell.box is not None:
        x, y, width, height = cell.box
        picture = picture.crop((x, y, x + width, y + height))
    return picture


def _save_predictions(
    *,
    batch_id: int,
    model_version: ModelVersion,
    cells: Sequence[Cell],
    predictions: Sequence[CellPrediction],
) -> None:
    with transaction.atomic():
        Prediction.objects.bulk_create(
            [
                Prediction(
                    cell=cell,
                    model_version=model_version,
                    label=prediction.label,
                    confidence=prediction.confidence,
                    probabilities=prediction.probabilities,
                )
                for cell, prediction in zip(cells, predictions, strict=True)
            ],
            ignore_conflicts=True,
        )
        done = Prediction.objects.filter(
            cell__image__batch_id=batch_id, model_version=model_version
        ).count()
        Batch.objects.filter(pk=batch_id).update(processed_images=done)


def mark_batch_failed(*, batch_id: int, reason: str) -> None:
    with transaction.atomic():
        Batch.objects.filter(pk=batch_id).exclude(
            status__in=[Batch.Status.DONE, Batch.Status.CANCELLED]
        ).update(status=Batch.Status.FAILED, error=reason, finished_at=timezone.now())


def cancel_batch(*, batch_id: int) -> bool:
    """Cancel a queued or processing batch; False when it had already finished."""
    with transaction.atomic():
        return bool(
            Batch.objects.filter(
                pk=batch_id, status__in=[Batch.Status.QUEUED, Batch.Status.PROCESSING]
            ).update(status=Batch.Status.CANCELLED, finished_at=timezone.now())
        )
