"""Case and batch services: every write to clinical records goes through here.

Views, the API and Celery tasks stay thin and call these keyword-only functions. This module
is the portal's side: Django, Pillow and NumPy only, never PyTorch (the worker's side is
`webportal.pipeline`), so a web process stays small.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, BinaryIO

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, models, transaction
from django.db.models import Sum, Value
from django.db.models.functions import Lower
from django.utils import timezone

from ml.geometry import eval_geometry, geometry_key
from ml.locate import kind_by_size
from webportal import logs
from webportal.accounts.models import Lab
from webportal.accounts.services import CASE_WRITERS, require_role
from webportal.audit.models import Action
from webportal.audit.services import record_event
from webportal.cases.models import Batch, Case, Cell, Image, ModelVersion, Patient, Shard
from webportal.cases.registry import active_model_for
from webportal.cases.uploads import (
    DEFAULT_LIMITS,
    FITTED_COPY_SUFFIX,
    AcceptedImage,
    RejectedFile,
    UploadLimits,
    inspect_uploads,
)
from webportal.celery import PROCESS_BATCH_TASK, app
from webportal.core.errors import ServiceError as ServiceError

if TYPE_CHECKING:
    from PIL import Image as PILImage

logger = logging.getLogger(__name__)


# --- queueing -------------------------------------------------------------------------------


def plan_shards(*, batch_id: int) -> int:
    """Split a batch's accepted images into shards of at most BATCH_SHARD_IMAGES (in upload
    order: a field and the cells located in it belong to one shard); nothing when it has them
    already. Returns the number of shards the batch has."""
    size = settings.BATCH_SHARD_IMAGES
    with transaction.atomic():
        batch = Batch.objects.select_for_update().select_related("case").get(pk=batch_id)
        existing = Shard.objects.filter(batch_id=batch_id).count()
        if existing:
            return existing
        ids = list(
            Image.objects.filter(batch_id=batch_id, status=Image.Status.OK)
            .order_by("id")
            .values_list("id", flat=True)
        )
        shards = [
            Shard(
                batch_id=batch_id,
                lab_id=batch.case.lab_id,
                priority=batch.priority,
                first_image_id=part[0],
                last_image_id=part[-1],
                images=len(part),
            )
            for part in (ids[start : start + size] for start in range(0, len(ids), size))
        ]
        Shard.objects.bulk_create(shards)
        return len(shards)


def send_batch(*, batch_id: int, queue: str) -> None:
    """Offer the batch's queued shards now: one message each, by task name.

    A message only says "there is work" (the worker claims whichever shard the database puts
    first, webportal.pipeline.shards); a batch that is not held, queued or processing sends
    nothing. Callers inside a transaction use enqueue_on_commit instead.
    """
    if not Batch.objects.filter(
        pk=batch_id, status__in=[Batch.Status.QUEUED, Batch.Status.PROCESSING]
    ).exists():
        return
    plan_shards(batch_id=batch_id)
    now = timezone.now()
    Batch.objects.filter(pk=batch_id, status=Batch.Status.QUEUED).update(enqueued_at=now)
    waiting = Shard.objects.filter(batch_id=batch_id, status=Shard.Status.QUEUED)
    count = waiting.update(enqueued_at=now)
    for _ in range(max(count, 1)):  # one at least: a batch left to finish is looked at
        app.send_task(PROCESS_BATCH_TASK, args=(batch_id,), queue=queue)


def offer_shard(*, shard_id: int) -> None:
    """Send one message for one queued shard (re-offered or resent by the sweeper, or given
    back at a task's time limit), marking when."""
    shard = Shard.objects.select_related("batch").get(pk=shard_id)
    Shard.objects.filter(pk=shard_id, status=Shard.Status.QUEUED).update(enqueued_at=timezone.now())
    app.send_task(PROCESS_BATCH_TASK, args=(shard.batch_id,), queue=shard.batch.queue)


def enqueue_on_commit(*, batch: Batch) -> None:
    """Split the batch into shards now and send their messages once the surrounding
    transaction has committed its rows.

    Robust: a broker that fails now is logged and leaves the batch saved and queued, with its
    files; the sweeper sends its messages after BATCH_RESEND_AFTER_SECONDS. The request that
    saved it answers as usual instead of failing after its rows were committed.
    """
    batch_id, queue = batch.pk, batch.queue
    plan_shards(batch_id=batch_id)
    transaction.on_commit(lambda: send_batch(batch_id=batch_id, queue=queue), robust=True)


def cancel_batch(*, batch_id: int, actor: User | None = None) -> bool:
    """Cancel a held, queued or processing batch; False when it had already finished.

    `actor` None means the system; a user must be staff, pathologist or integrator of the lab.
    """
    batch = Batch.objects.select_related("case__lab").get(pk=batch_id)
    lab = batch.case.lab
    if actor is not None:
        require_role(user=actor, lab=lab, allowed=CASE_WRITERS, action="cancel batches")
    with transaction.atomic():
        cancelled = bool(
            Batch.objects.filter(
                pk=batch_id,
                status__in=[Batch.Status.HELD, Batch.Status.QUEUED, Batch.Status.PROCESSING],
            ).update(status=Batch.Status.CANCELLED, finished_at=timezone.now())
        )
        if cancelled:
            record_event(
                lab=lab,
                actor=actor,
                action=Action.BATCH_CANCELLED,
                obj=batch,
                before={"status": batch.status},
                after={"status": Batch.Status.CANCELLED},
            )
        return cancelled


# --- cases ----------------------------------------------------------------------------------


ACCESSION_NUMBER_MAX_LENGTH = Case._meta.get_field("accession_number").max_length or 100


def normalise_accession_number(value: str) -> str:
    """What a case's accession number is stored as: no spaces around it, runs of whitespace
    inside it made one space. Its case is kept as typed; duplicates are compared ignoring case."""
    return " ".join(value.split())


@dataclass(frozen=True)
class PatientDetails:
    """Who a case is for: the identifier (MRN) and, optionally, what a report prints as the
    second identifier (name, birth date) and the sex and age its reference intervals need."""

    identifier: str
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str = ""


@dataclass(frozen=True)
class SpecimenDetails:
    """The primary sample: its type, when it was collected and when the lab received it."""

    type: str = ""
    collected_at: datetime | None = None
    received_at: datetime | None = None


# A clock a few minutes fast on the collecting ward is not a specimen from the future.
CLOCK_SKEW = timedelta(minutes=5)


def _max_length(model: type[models.Model], name: str) -> int:
    return int(getattr(model._meta.get_field(name), "max_length", None) or 100)


def _check_length(value: str, *, what: str, limit: int) -> None:
    if len(value) > limit:
        raise ServiceError(f"{what} has at most {limit} characters (this one has {len(value)}).")


def clean_patient_details(details: PatientDetails) -> PatientDetails:
    """The details with spaces trimmed, or a ServiceError saying what is wrong with them."""
    cleaned = replace(
        details,
        identifier=details.identifier.strip(),
        family_name=" ".join(details.family_name.split()),
        given_name=" ".join(details.given_name.split()),
        sex=details.sex.strip().lower(),
    )
    for name, what in [
        ("external_id", "A patient id"),
        ("family_name", "A family name"),
        ("given_name", "A given name"),
    ]:
        value = cleaned.identifier if name == "external_id" else getattr(cleaned, name)
        _check_length(value, what=what, limit=_max_length(Patient, name))
    if not cleaned.identifier and (
        cleaned.family_name or cleaned.given_name or cleaned.birth_date or cleaned.sex
    ):
        raise ServiceError("A patient needs an identifier (patient id / MRN) with the details.")
    if cleaned.sex and cleaned.sex not in Patient.Sex.values:
        raise ServiceError(
            f'"{details.sex}" is not a sex the lab records; use one of: '
            + ", ".join(Patient.Sex.values)
            + "."
        )
    today = timezone.localdate()
    if cleaned.birth_date is not None:
        if cleaned.birth_date > today:
            raise ServiceError(f"The birth date {cleaned.birth_date} is in the future.")
        if cleaned.birth_date.year < today.year - 150:
            raise ServiceError(f"The birth date {cleaned.birth_date} is over 150 years ago.")
    return cleaned


def clean_specimen_details(specimen: SpecimenDetails) -> SpecimenDetails:
    """The specimen with its type trimmed, or a ServiceError saying what is wrong with it."""
    cleaned = replace(specimen, type=" ".join(specimen.type.split()))
    _check_length(cleaned.type, what="A specimen type", limit=_max_length(Case, "specimen_type"))
    latest = timezone.now() + CLOCK_SKEW
    for moment, what in [
        (cleaned.collected_at, "collected"),
        (cleaned.received_at, "received"),
    ]:
        if moment is not None and moment > latest:
            raise ServiceError(
                f"The specimen cannot be {what} in the future ({moment:%Y-%m-%d %H:%M %Z})."
            )
    collected, received = cleaned.collected_at, cleaned.received_at
    if collected is not None and received is not None and received < collected:
        raise ServiceError("The specimen was received before it was collected: check both times.")
    return cleaned


def _patient_for(*, lab: Lab, details: PatientDetails) -> Patient:
    """The lab's patient with this identifier, created if new; details it lacks are filled in,
    and details that contradict the record are refused (a different person, or a typo)."""
    patient, created = Patient.objects.select_for_update().get_or_create(
        lab=lab,
        external_id=details.identifier,
        defaults={
            "family_name": details.family_name,
            "given_name": details.given_name,
            "birth_date": details.birth_date,
            "sex": details.sex,
        },
    )
    if created:
        return patient
    given = {
        "family_name": details.family_name,
        "given_name": details.given_name,
        "birth_date": details.birth_date,
        "sex": details.sex,
    }
    missing: list[str] = []
    for name, value in given.items():
        if value in ("", None):
            continue
        recorded = getattr(patient, name)
        if recorded in ("", None):
            setattr(patient, name, value)
            missing.append(name)
        elif (recorded.lower() if isinstance(recorded, str) else recorded) != (
            value.lower() if isinstance(value, str) else value
        ):
            label = name.replace("_", " ")
            raise ServiceError(
                f"Patient {patient.external_id} is on record with {label} {recorded}, not "
                f"{value}. Check the patient id; the record is changed by the lab, not by a "
                "new case."
            )
    if missing:
        patient.save(update_fields=missing)
    return patient


def create_case(
    *,
    lab: Lab,
    created_by: User | None,
    accession_number: str,
    patient_external_id: str = "",
    patient: PatientDetails | None = None,
    specimen: SpecimenDetails | None = None,
    requester: str = "",
    clinical_note: str = "",
) -> Case:
    """A new case; `created_by` None means the system (seeding, benchmarks), else the user
    must be staff, pathologist or integrator of the lab.

    The patient is `patient` (identifier and details) or, as before, `patient_external_id`
    alone; `specimen` and `requester` are what the report prints of the sample and who asked.
    """
    if created_by is not None:
        require_role(user=created_by, lab=lab, allowed=CASE_WRITERS, action="create cases")
    accession_number = normalise_accession_number(accession_number)
    if not accession_number:
        raise ServiceError("An accession number is required.")
    if len(accession_number) > ACCESSION_NUMBER_MAX_LENGTH:
        raise ServiceError(
            f"An accession number has at most {ACCESSION_NUMBER_MAX_LENGTH} characters "
            f"(this one has {len(accession_number)})."
        )
    details = clean_patient_details(patient or PatientDetails(identifier=patient_external_id))
    specimen = clean_specimen_details(specimen or SpecimenDetails())
    requester = " ".join(requester.split())
    _check_length(requester, what="A requester", limit=_max_length(Case, "requester"))
    duplicate = ServiceError(f"Accession number {accession_number} already exists in {lab}.")
    with transaction.atomic():
        same_number = Case.objects.alias(key=Lower("accession_number")).filter(
            lab=lab, key=Lower(Value(accession_number))
        )
        existing = same_number.values_list("accession_number", flat=True).first()
        if existing is not None:
            # Named as it was first written: "h-1" typed, "H-1" stored.
            raise ServiceError(f"Accession number {existing} already exists in {lab}.")
        record = _patient_for(lab=lab, details=details) if details.identifier else None
        if (
            record is not None
            and record.birth_date is not None
            and specimen.collected_at is not None
            and timezone.localtime(specimen.collected_at).date() < record.birth_date
        ):
            raise ServiceError("The specimen was collected before the patient's birth date.")
        try:
            # A savepoint: a twin created since the check above (another request) breaks the
            # unique constraint here, and the user gets the same message.
            with transaction.atomic():
                case = Case.objects.create(
                    lab=lab,
                    patient=record,
                    accession_number=accession_number,
                    clinical_note=clinical_note,
                    specimen_type=specimen.type,
                    specimen_collected_at=specimen.collected_at,
                    specimen_received_at=specimen.received_at,
                    requester=requester,
                    created_by=created_by,
                )
        except IntegrityError as exc:
            raise duplicate from exc
        record_event(
            lab=lab,
            actor=created_by,
            action=Action.CASE_CREATED,
            obj=case,
            after={
                "accession_number": case.accession_number,
                "patient": record.external_id if record else "",
                "clinical_note": clinical_note,
                **(
                    {
                        "patient_name": record.name,
                        "birth_date": record.birth_date,
                        "sex": record.sex,
                    }
                    if record is not None and (record.name or record.birth_date or record.sex)
                    else {}
                ),
                **(
                    {
                        "specimen_type": specimen.type,
                        "collected_at": specimen.collected_at,
                        "received_at": specimen.received_at,
                    }
                    if specimen != SpecimenDetails()
                    else {}
                ),
                **({"requester": requester} if requester else {}),
            },
        )
        return case


def upload_limits() -> UploadLimits:
    return UploadLimits(
        max_file_bytes=settings.UPLOAD_MAX_FILE_BYTES,
        max_pixels=settings.UPLOAD_MAX_PIXELS,
        max_images=settings.DATA_UPLOAD_MAX_NUMBER_FILES,
        max_upload_pixels=settings.UPLOAD_MAX_TOTAL_PIXELS,
    )


# UPLOAD_THREADS=0 stops here: more threads than this only add memory (each holds a decoded
# image) once the cores are busy.
MAX_AUTO_UPLOAD_THREADS = 8


def upload_threads() -> int:
    """Threads an upload's images are inspected in (settings.UPLOAD_THREADS; 0: one per core)."""
    if settings.UPLOAD_THREADS:
        return int(settings.UPLOAD_THREADS)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_AUTO_UPLOAD_THREADS, cores or 1))


def too_many_files_message() -> str:
    """Why an upload of more than UPLOAD_MAX_FILES files is refused (portal and API alike)."""
    return (
        f"Too many files in one upload: at most {settings.DATA_UPLOAD_MAX_NUMBER_FILES:,} files "
        "can be sent at once. Upload them in several batches, or put them in .zip archives "
        f"(up to {DEFAULT_LIMITS.max_zip_members:,} images each)."
    )


@dataclass
class PreparedUpload:
    """An upload validated, re-encoded and stored, with no database row written yet.

    `images` are unsaved Image rows (status ok, files already in storage) and rejected ones;
    `discard` deletes the stored files, for an upload whose rows are never written.
    """

    model_version: ModelVersion
    images: list[Image] = field(default_factory=list)
    stored_names: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(image.status == Image.Status.OK for image in self.images)

    @property
    def rejected(self) -> int:
        return len(self.images) - self.accepted

    def discard(self) -> None:
        for name in self.stored_names:
            try:
                default_storage.delete(name)
            except OSError:
                logger.warning("could not delete %s of a failed upload", name, exc_info=True)
        self.stored_names.clear()


# A whole field the worker will locate keeps, as its `model_input`, an uncompressed copy of the
# whole image (geometry FIELD_COPY) until the worker has located it, which then deletes it.
# Decoding the stored 640x480 PNG took longer than locating the field's white cells (the
# worker's stage timings, batch_job.recording_stages); a BMP has nothing to decompress. It
# is three times the PNG's size (900 KB at 640x480), hence kept only while the field waits,
# and made only for fields up to FIELD_COPY_MAX_PIXELS (12 MB uncompressed), so an upload's
# memory stays bounded by its largest decoded image; a larger field is read from its PNG.
FIELD_COPY = "field"
FIELD_COPY_MAX_PIXELS = 4_000_000


def keeps_field_copy(*, width: int, height: int, image_kind: str) -> bool:
    """Whether an accepted image gets the uncompressed whole-image copy (see FIELD_COPY)."""
    if width * height > FIELD_COPY_MAX_PIXELS or image_kind == Batch.ImageKind.CELL:
        return False
    return image_kind == Batch.ImageKind.FIELD or kind_by_size(width, height) == "field"


def lab_storage_used(*, lab: Lab) -> int:
    """Bytes the lab's uploads have stored (images and their fitted copies)."""
    used = Image.objects.filter(batch__case__lab=lab).aggregate(total=Sum("stored_bytes"))
    return int(used["total"] or 0)


def _quota_reason(*, quota: int) -> str:
    return (
        f"Not stored: the lab's storage quota of {quota / 1024**3:.1f} GiB is full. Ask your "
        "operator for more room (LAB_STORAGE_QUOTA_BYTES), or upload it later."
    )


def prepare_upload(
    *,
    model_version: ModelVersion,
    files: Iterable[tuple[str, BinaryIO]],
    image_kind: str = Batch.ImageKind.AUTO,
    lab: Lab | None = None,
) -> PreparedUpload:
    """Validate, re-encode and store every file, one at a time, outside any transaction.

    This is the slow part of an upload (decoding every image): done before the rows are
    written, it holds no database lock, so other labs' requests and the workers' progress go on
    meanwhile (SQLite has one writer at a time). Each file is stored and its pixels freed before
    the next is decoded. If anything fails on the way, the files stored so far are deleted.
    Beside each image goes the copy the worker reads: fitted to the model for a single cell,
    the whole image uncompressed for a field (`keeps_field_copy`; `image_kind` as the batch's).
    """
    prepared = PreparedUpload(model_version=model_version)
    fit_cell = eval_geometry(model_version.input_size, model_version.resize)
    geometry = geometry_key(model_version.input_size, model_version.resize)
    folder = f"uploads/{timezone.now():%Y/%m/%d}/{uuid.uuid4().hex}"

    def field_copy(width: int, height: int) -> bool:
        return keeps_field_copy(width=width, height=height, image_kind=image_kind)

    def fit(image: PILImage.Image) -> PILImage.Image:
        return image if field_copy(*image.size) else fit_cell(image)

    quota = settings.LAB_STORAGE_QUOTA_BYTES if lab is not None else 0
    used = lab_storage_used(lab=lab) if lab is not None and quota else 0
    try:
        for result in inspect_uploads(
            files, limits=upload_limits(), fit=fit, threads=upload_threads()
        ):
            size = (
                len(result.content) + len(result.model_input or b"")
                if isinstance(result, AcceptedImage)
                else 0
            )
            if isinstance(result, AcceptedImage) and quota and used + size > quota:
                result = RejectedFile(result.name, _quota_reason(quota=quota))
            if isinstance(result, AcceptedImage):
                used += size
                copy = FIELD_COPY if field_copy(result.width, result.height) else geometry
                prepared.images.append(
                    _store_accepted_image(prepared, accepted=result, folder=folder, geometry=copy)
                )
            else:
                prepared.images.append(
                    Image(
                        original_name=result.name,
                        status=Image.Status.REJECTED,
                        reject_reason=result.reason,
                    )
                )
    except BaseException:
        prepared.discard()
        raise
    return prepared


def _store_accepted_image(
    prepared: PreparedUpload, *, accepted: AcceptedImage, folder: str, geometry: str
) -> Image:
    image = Image(
        original_name=accepted.name,
        stored_bytes=len(accepted.content) + len(accepted.model_input or b""),
        sha256=accepted.sha256,
        source_format=accepted.source_format,
        width=accepted.width,
        height=accepted.height,
        status=Image.Status.OK,
        kind=kind_by_size(accepted.width, accepted.height),
    )
    stem = uuid.uuid4().hex
    image.file.name = default_storage.save(f"{folder}/{stem}.png", ContentFile(accepted.content))
    prepared.stored_names.append(image.file.name)
    if accepted.model_input is not None:
        image.model_input.name = default_storage.save(
            f"{folder}/{stem}.{geometry}.{FITTED_COPY_SUFFIX}", ContentFile(accepted.model_input)
        )
        prepared.stored_names.append(image.model_input.name)
        image.model_input_geometry = geometry
    return image


def submit_batch(
    *,
    case: Case,
    created_by: User | None,
    files: Iterable[tuple[str, BinaryIO]],
    priority: str = Batch.Priority.ROUTINE,
    hold_if_duplicate: bool = False,
    image_kind: str = Batch.ImageKind.AUTO,
) -> Batch:
    """Validate and store every file, then write the rows in one short transaction and queue
    the batch once they are committed.

    A bad file becomes a rejected Image with its reason; the good files go on regardless.
    With `hold_if_duplicate`, a batch holding every image of an earlier batch of the case (the
    same files sent again, e.g. after going back in the browser) is stored but held, not
    queued, until the user confirms it (`confirm_batch`) or cancels it.
    `created_by` None means the system; a user must be staff, pathologist or integrator.
    `image_kind`: whether the images are whole fields (the worker locates their white cells)
    or single cells; "auto" decides per image, by its size (ml.locate.kind_by_size) and, for a
    field-sized image, by its content when the worker reads it (ml.locate.image_kind).
    """
    _check_image_kind(image_kind)
    if created_by is not None:
        require_role(user=created_by, lab=case.lab, allowed=CASE_WRITERS, action="upload batches")
    prepared = prepare_upload(
        model_version=active_model_for(lab=case.lab), files=files, image_kind=image_kind,
        lab=case.lab,
    )  # fmt: skip
    return submit_prepared_batch(
        case=case,
        created_by=created_by,
        prepared=prepared,
        priority=priority,
        hold_if_duplicate=hold_if_duplicate,
        image_kind=image_kind,
    )


def _check_image_kind(image_kind: str) -> None:
    if image_kind not in Batch.ImageKind.values:
        raise ServiceError(f"Unknown image kind {image_kind!r}: one of {Batch.ImageKind.values}.")


def submit_prepared_batch(
    *,
    case: Case,
    created_by: User | None,
    prepared: PreparedUpload,
    priority: str = Batch.Priority.ROUTINE,
    hold_if_duplicate: bool = False,
    image_kind: str = Batch.ImageKind.AUTO,
) -> Batch:
    """The rows of a prepared upload, in one short transaction; its files are deleted if the
    rows cannot be written. A caller that wraps this in its own transaction discards the
    upload itself when that one rolls back."""
    _check_image_kind(image_kind)
    if created_by is not None:
        require_role(user=created_by, lab=case.lab, allowed=CASE_WRITERS, action="upload batches")
    model_version = prepared.model_version
    accepted, rejected = prepared.accepted, prepared.rejected
    try:
        with transaction.atomic():
            batch = Batch(
                case=case,
                priority=priority,
                image_kind=image_kind,
                model_version=model_version,
                created_by=created_by,
                total_images=accepted,
                rejected_files=rejected,
            )
            if accepted == 0:
                batch.status = Batch.Status.FAILED
                batch.error = (
                    "No file in the upload was an acceptable image; see the reasons below."
                )
                batch.finished_at = timezone.now()
            batch.save()
            for image in prepared.images:
                image.batch = batch
                if image_kind != Batch.ImageKind.AUTO:
                    image.kind = image_kind  # forced; else the size said it (prepare_upload)
            images = Image.objects.bulk_create(prepared.images, batch_size=500)
            # A single cell is one Cell from now on; a field's cells are made by the worker
            # when it locates them (pipeline/batch_job.py).
            Cell.objects.bulk_create(
                [
                    Cell(image=image, box=None)
                    for image in images
                    if image.status == Image.Status.OK and image.kind == Image.Kind.CELL
                ],
                batch_size=500,
            )
            if accepted and hold_if_duplicate and earlier_batch_with_same_images(batch=batch):
                batch.status = Batch.Status.HELD
                batch.save(update_fields=["status"])
            record_event(
                lab=case.lab,
                actor=created_by,
                action=Action.BATCH_UPLOADED,
                obj=batch,
                after={
                    "case": case.accession_number,
                    "priority": batch.priority,
                    "image_kind": batch.image_kind,
                    "status": batch.status,
                    "accepted": accepted,
                    "rejected": rejected,
                    "model_version": str(model_version),
                },
            )
            logs.batch_id.set(str(batch.pk))  # this request's later lines name the batch
            logs.lab.set(case.lab.slug)
            logger.info(
                "batch uploaded: %d accepted, %d rejected, %s", accepted, rejected, batch.status
            )
            if batch.status == Batch.Status.QUEUED:
                enqueue_on_commit(batch=batch)
    except BaseException:
        prepared.discard()
        raise
    return batch


def earlier_batch_with_same_images(*, batch: Batch) -> Batch | None:
    """The latest other batch of the case whose accepted images (by the sha256 of the uploaded
    bytes) are all in `batch`; cancelled and failed batches do not count (sending those again
    is deliberate)."""
    hashes = set(
        batch.images.filter(status=Image.Status.OK)
        .exclude(sha256="")
        .values_list("sha256", flat=True)
    )
    if not hashes:
        return None
    candidates = (
        Batch.objects.filter(case_id=batch.case_id, images__sha256__in=hashes)
        .exclude(pk=batch.pk)
        .exclude(status__in=[Batch.Status.CANCELLED, Batch.Status.FAILED])
        .distinct()
        .order_by("-created_at", "-pk")
    )
    for candidate in candidates:
        theirs = set(
            candidate.images.filter(status=Image.Status.OK).values_list("sha256", flat=True)
        )
        if theirs and theirs <= hashes:
            return candidate
    return None


def confirm_batch(*, batch_id: int, actor: User | None = None) -> bool:
    """Queue a held batch (the user chose to classify the same images again); False when the
    batch was not held (already confirmed or cancelled)."""
    batch = Batch.objects.select_related("case__lab").get(pk=batch_id)
    lab = batch.case.lab
    if actor is not None:
        require_role(user=actor, lab=lab, allowed=CASE_WRITERS, action="upload batches")
    with transaction.atomic():
        confirmed = bool(
            Batch.objects.filter(pk=batch_id, status=Batch.Status.HELD).update(
                status=Batch.Status.QUEUED
            )
        )
        if confirmed:
            batch.refresh_from_db()
            record_event(
                lab=lab,
                actor=actor,
                action="batch.confirmed",
                obj=batch,
                before={"status": Batch.Status.HELD},
                after={"status": Batch.Status.QUEUED},
            )
            enqueue_on_commit(batch=batch)
        return confirmed
