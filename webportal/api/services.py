"""API-only services: idempotent uploads. The clinical work is done by webportal.cases."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction

from webportal.accounts.services import CASE_WRITERS, require_role
from webportal.api.models import IdempotencyKey
from webportal.cases import registry, services
from webportal.cases.models import Batch, Case


class IdempotencyConflict(Exception):
    """The same Idempotency-Key came with a different upload."""


@dataclass(frozen=True)
class Submitted:
    batch: Batch
    replayed: bool  # True when an earlier request with the same key made this batch


def upload_fingerprint(
    *,
    case: Case,
    priority: str,
    files: Sequence[UploadedFile[Any]],
    image_kind: str = Batch.ImageKind.AUTO,
) -> str:
    # A forced image kind is part of the upload; "auto" adds nothing, so keys stored before
    # the API took image_kind keep their fingerprints.
    kind = "" if image_kind == Batch.ImageKind.AUTO else f"{image_kind}\n"
    digest = hashlib.sha256(f"{case.pk}\n{priority}\n{kind}".encode())
    for upload in files:
        file_digest = hashlib.sha256()
        for chunk in upload.chunks():
            file_digest.update(chunk)
        upload.seek(0)
        digest.update(f"{upload.name}\n{file_digest.hexdigest()}\n".encode())
    return digest.hexdigest()


def submit_batch_once(
    *,
    case: Case,
    created_by: User | None,
    files: Sequence[UploadedFile[Any]],
    priority: str,
    image_kind: str = Batch.ImageKind.AUTO,
    idempotency_key: str = "",
) -> Submitted:
    """Submit a batch; with a key, a retry of the same upload returns the batch made first.
    `image_kind` as `services.submit_batch` (auto, field or cell)."""
    named = [(upload.name or "unnamed", cast(BinaryIO, upload)) for upload in files]
    if not idempotency_key:
        batch = services.submit_batch(
            case=case, created_by=created_by, files=named, priority=priority, image_kind=image_kind
        )
        return Submitted(batch=batch, replayed=False)
    fingerprint = upload_fingerprint(
        case=case, priority=priority, files=files, image_kind=image_kind
    )
    earlier = _earlier(case=case, key=idempotency_key, fingerprint=fingerprint)
    if earlier is not None:
        return earlier
    if created_by is not None:
        require_role(user=created_by, lab=case.lab, allowed=CASE_WRITERS, action="upload batches")
    # Decoding and storing happen before the transaction, which stays short (no lock held
    # while images are validated); its files are deleted if the rows are not kept.
    prepared = services.prepare_upload(
        model_version=registry.active_model_for(lab=case.lab), files=named, image_kind=image_kind,
        lab=case.lab,
    )  # fmt: skip
    try:
        with transaction.atomic():
            batch = services.submit_prepared_batch(
                case=case,
                created_by=created_by,
                prepared=prepared,
                priority=priority,
                image_kind=image_kind,
            )
            IdempotencyKey.objects.create(
                lab=case.lab, key=idempotency_key, fingerprint=fingerprint, batch=batch
            )
    except BaseException as exc:
        prepared.discard()
        if not isinstance(exc, IntegrityError):
            raise
        # A concurrent request with the same key won the race; its batch is the one.
        earlier = _earlier(case=case, key=idempotency_key, fingerprint=fingerprint)
        if earlier is None:
            raise
        return earlier
    return Submitted(batch=batch, replayed=False)


def _earlier(*, case: Case, key: str, fingerprint: str) -> Submitted | None:
    row = (
        IdempotencyKey.objects.filter(lab=case.lab, key=key)
        .select_related("batch", "batch__case", "batch__model_version")
        .first()
    )
    if row is None:
        return None
    if row.fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used for a different upload "
            f"(batch {row.batch_id}); use a new key for a new upload."
        )
    return Submitted(batch=row.batch, replayed=True)
