"""The batch job: claiming a shard of a batch (`shards`), classifying it in chunks, finishing
the batch when its last shard is done (the verdict, the preliminary report), failing it. The
batch guard's verdict is in `verdict`, the sweeper in `sweeper`.

Every function here is safe to run twice. The database is the source of truth; a broker
message only says "there is work": a claim is a conditional UPDATE on the shard the database
puts first, a re-offered shard does only the cells still without a prediction, and the unique
constraint on (cell, model version) refuses a second prediction even when two deliveries race.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Least
from django.utils import timezone
from PIL import Image as PILImage

from ml.inference import BatchCheck, CellPrediction, Classifier, read_ahead
from ml.locate import crop_cell, image_kind, locate
from webportal.cases.models import Batch, Cell, Image, ModelVersion, Prediction, Shard
from webportal.cases.selectors import delivery_limit_reached
from webportal.cases.services import FIELD_COPY
from webportal.celery import PROCESS_BATCH_TASK, app
from webportal.core.errors import ServiceError
from webportal.notifications import webhooks
from webportal.ops import monitoring
from webportal.pipeline.classifiers import chunk_size_for, load_classifier
from webportal.pipeline.pixels import open_cell, open_original
from webportal.pipeline.shards import (
    claim_next_shard,
    complete_shard,
    ensure_shards,
    release_shards,
)
from webportal.pipeline.verdict import check_if_pending, open_batch_check, record_check
from webportal.reports.services import write_preliminary_report

logger = logging.getLogger(__name__)


# --- timing hooks ---------------------------------------------------------------------------

# Called with (stage, seconds) after each stage of process_batch while one is installed (the
# benchmark's profile); None in the product. The decoding stages run in the read-ahead thread.
StageHook = Callable[[str, float], None]
_stage_hook: StageHook | None = None


@contextmanager
def recording_stages(hook: StageHook) -> Iterator[None]:
    """Report the time of each stage of process_batch to `hook` within the block."""
    global _stage_hook
    previous, _stage_hook = _stage_hook, hook
    try:
        yield
    finally:
        _stage_hook = previous


@contextmanager
def _stage(name: str) -> Iterator[None]:
    hook = _stage_hook
    if hook is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        hook(name, time.perf_counter() - start)


# --- the job --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: str
    classified: int  # cells classified by this call
    remaining: int  # units (cells, fields) of the shard still undone when it returned


def process_batch(*, batch_id: int) -> Outcome:
    """Claim the next shard the database offers (of any batch: STAT first, then fair share
    between labs, then the oldest batch) and classify it; `batch_id` is the batch whose
    message this is (for the logs, a batch queued before batches had shards, and a batch
    whose finish never committed).

    Whole fields not yet located are located on the way (ml.locate), in the same chunks: their
    white cells become Cell rows with boxes, saved with their predictions in one transaction,
    so a re-offered shard never locates a field twice. The worker that completes a batch's
    last shard checks the batch (the verdict), writes the report and marks it done.
    """
    global _batch_at_work
    _batch_at_work = batch_id
    ensure_shards(batch_id=batch_id)
    shard = claim_next_shard()
    if shard is None:
        return _finish_if_complete(batch_id=batch_id)
    _batch_at_work = shard.batch_id
    return work_shard(shard=shard)


# The batch whose shard this process works (or last worked): a message names one batch but
# its worker may claim another's shard, and an error must fail the batch it happened in.
_batch_at_work: int | None = None


def batch_at_work(*, default: int) -> int:
    """The batch of the shard the last process_batch of this process claimed, else `default`
    (the message's): the batch an error in that call belongs to."""
    return default if _batch_at_work is None else _batch_at_work


def work_shard(*, shard: Shard) -> Outcome:
    """Classify a claimed shard's images still undone; finish its batch if it was the last."""
    batch_id = shard.batch_id
    batch = Batch.objects.select_related("model_version").get(pk=batch_id)
    if delivery_limit_reached(deliveries=shard.deliveries):  # this delivery counted
        mark_batch_failed(batch_id=batch_id, reason=gave_up(shard.deliveries - 1))
        return Outcome(status=Batch.Status.FAILED, classified=0, remaining=0)
    if batch.status != Batch.Status.PROCESSING:  # cancelled since the claim
        logger.info("batch %s is %s: shard %s left", batch_id, batch.status, shard.pk)
        return Outcome(status=batch.status, classified=0, remaining=0)
    logger.info(
        "shard %s of batch %s: images %s-%s",
        shard.pk,
        batch_id,
        shard.first_image_id,
        shard.last_image_id,
    )

    model_version = batch.model_version
    classifier = load_classifier(model_version=model_version)
    open_batch_check(batch_id=batch_id, guarded=classifier.ood is not None)
    in_shard = {
        "batch_id": batch_id,
        "status": Image.Status.OK,
        "id__gte": shard.first_image_id,
        "id__lte": shard.last_image_id,
    }
    missing = list(
        Cell.objects.filter(**{f"image__{key}": value for key, value in in_shard.items()})
        .exclude(predictions__model_version=model_version)
        .select_related("image")
        .order_by("id")
    )
    fields = list(
        Image.objects.filter(**in_shard, kind=Image.Kind.FIELD, located_at__isnull=True).order_by(
            "id"
        )
    )
    # In upload order: a cell's image id, a field's own id.
    work: list[Cell | Image] = sorted(
        [*missing, *fields], key=lambda u: u.image_id if isinstance(u, Cell) else u.pk
    )
    detect = batch.image_kind == Batch.ImageKind.AUTO
    chunk_size = chunk_size_for(classifier=classifier)
    classified = done = 0
    unsaved: tuple[Sequence[Cell | Image], _Decoded, list[CellPrediction]] | None = None

    def save(pending: tuple[Sequence[Cell | Image], _Decoded, list[CellPrediction]]) -> None:
        nonlocal classified, done
        units, decoded, predictions = pending
        with _stage("save_predictions"):
            _save_predictions(
                batch_id=batch_id,
                shard_id=shard.pk,
                model_version=model_version,
                units=units,
                located=decoded.located,
                predictions=predictions,
            )
        classified += len(predictions)
        done += len(units)

    def forward(tensor: torch.Tensor) -> torch.Tensor:
        with _stage("forward"):
            return classifier.predict_logits(tensor)

    chunks = _prefetched_chunks(work, chunk_size=chunk_size, classifier=classifier, detect=detect)
    # The forward pass runs in the model's own thread (the engines release the GIL) while this
    # thread saves the chunk before: its database writes, and on SQLite any wait for the write
    # lock another worker holds, overlap the next forward pass instead of following it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="model") as model_thread:
        while True:
            with _stage("wait_for_next_chunk"):
                chunk = next(chunks, None)
            if chunk is None:
                break
            units, decoded = chunk
            with _stage("cancel_checks"):
                cancelled = _is_cancelled(batch_id)
            if cancelled:
                if unsaved is not None:
                    save(unsaved)
                logger.info("batch %s was cancelled", batch_id)
                return Outcome(Batch.Status.CANCELLED, classified, len(work) - done)
            running = None
            if decoded.tensor is not None:
                running = model_thread.submit(forward, decoded.tensor)
            if unsaved is not None:
                save(unsaved)
            predictions: list[CellPrediction] = []
            if running is not None:
                with _stage("wait_for_forward"):
                    logits = running.result()
                with _stage("softmax_and_dicts"):
                    predictions = classifier.predictions_from_logits(logits)
            unsaved = (units, decoded, predictions)
    if unsaved is not None:
        save(unsaved)
    if not complete_shard(shard_id=shard.pk, batch_id=batch_id):
        return Outcome(Batch.Status.PROCESSING, classified, 0)
    return _check_and_finish(
        batch_id=batch_id, model_version=model_version, classifier=classifier, classified=classified
    )


def _check_and_finish(
    *, batch_id: int, model_version: ModelVersion, classifier: Classifier, classified: int
) -> Outcome:
    """The batch guard's verdict (if still pending), then the finish: every shard is done."""
    with _stage("batch_check"):
        check = check_if_pending(
            batch_id=batch_id, model_version=model_version, classifier=classifier
        )
    with _stage("finish_and_report"):
        return _finish(batch_id=batch_id, classified=classified, check=check)


def _finish_if_complete(*, batch_id: int) -> Outcome:
    """A message that found no shard to claim: finish its batch if every shard is done but
    the batch is not (the worker that completed the last one died before its finish
    committed); else nothing."""
    batch = Batch.objects.select_related("model_version").filter(pk=batch_id).first()
    if batch is None:
        logger.info("batch %s is missing: nothing to do", batch_id)
        return Outcome(status="missing", classified=0, remaining=0)
    shards = Shard.objects.filter(batch_id=batch_id)
    if (
        batch.status != Batch.Status.PROCESSING
        or not shards.exists()
        or shards.exclude(status=Shard.Status.DONE).exists()
    ):
        logger.info("batch %s is %s: nothing to claim", batch_id, batch.status)
        return Outcome(status=batch.status, classified=0, remaining=0)
    return _check_and_finish(
        batch_id=batch_id,
        model_version=batch.model_version,
        classifier=load_classifier(model_version=batch.model_version),
        classified=0,
    )


def _is_cancelled(batch_id: int) -> bool:
    return Batch.objects.filter(pk=batch_id, status=Batch.Status.CANCELLED).exists()


Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class _Decoded:
    """A chunk made ready in the read-ahead thread."""

    tensor: torch.Tensor | None  # one row per cell to classify, in the chunk's order
    # field image id -> the (x, y, width, height) boxes of the white cells located in it; None:
    # the image turned out a close-up of one cell (its one row is the whole image)
    located: dict[int, list[Box] | None]


def _prefetched_chunks(
    work: Sequence[Cell | Image], *, chunk_size: int, classifier: Classifier, detect: bool
) -> Iterator[tuple[Sequence[Cell | Image], _Decoded]]:
    """Chunks of work with their input tensor, the next one decoded while this one runs.

    A unit is a cell to classify or a field to locate; a field adds one row per white cell
    found. The cells and images are loaded already: decoding in the read-ahead thread reads
    files, never the database (a Django connection belongs to its thread).
    """
    chunks = []
    start = 0
    for size in chunk_sizes(len(work), chunk_size):
        chunks.append(work[start : start + size])
        start += size

    def decode(chunk: Sequence[Cell | Image]) -> _Decoded:
        pictures: list[PILImage.Image] = []
        fitted: list[bool] = []
        located: dict[int, list[Box] | None] = {}
        # The last whole image decoded: the boxed cells of one field (in image order) are cut
        # from one decoding of it, not one each.
        last: tuple[int, PILImage.Image] | None = None

        def original(image: Image) -> PILImage.Image:
            nonlocal last
            if last is None or last[0] != image.pk:
                last = (image.pk, open_original(image))
            return last[1]

        for unit in chunk:
            if isinstance(unit, Cell):
                with _stage("open_and_decode"):
                    picture, was_fitted = open_cell(
                        unit, geometry=classifier.geometry, original=original
                    )
                pictures.append(picture)
                fitted.append(was_fitted)
                continue
            with _stage("open_and_decode"):
                field = open_original(unit)
            with _stage("locate_and_crop"):
                if detect and image_kind(field) == "cell":
                    located[unit.pk] = None
                    pictures.append(field)
                    fitted.append(False)
                    continue
                cells = locate(field)
                located[unit.pk] = [cell.xywh for cell in cells]
                pictures += [crop_cell(field, cell.box) for cell in cells]
                fitted += [False] * len(cells)
        with _stage("resize_normalise"):
            tensor = classifier.preprocess(pictures, fitted=fitted) if pictures else None
        return _Decoded(tensor=tensor, located=located)

    yield from zip(chunks, read_ahead(decode(chunk) for chunk in chunks), strict=True)


def chunk_sizes(total: int, size: int) -> list[int]:
    """How many units go in each chunk: `size`, but smaller at both ends (size/8, /4, /2).

    The first forward pass waits for its chunk to be decoded, and the last one has nothing to
    overlap; small chunks there shorten both. With whole fields (about 13 ms of decoding and
    locating each) a first chunk of 32 kept the model idle for 0.4 s.
    """
    ramp = sorted({max(1, size // divisor) for divisor in (8, 4, 2)})
    sizes: list[int] = []
    left = total
    for step in ramp:
        if left > 0:
            sizes.append(min(step, left))
            left -= sizes[-1]
    tail = sum(ramp)
    while left > tail:
        sizes.append(min(size, left - tail))
        left -= sizes[-1]
    for step in reversed(ramp):
        if left > 0:
            sizes.append(min(step, left))
            left -= sizes[-1]
    return sizes


def _save_predictions(
    *,
    batch_id: int,
    shard_id: int,
    model_version: ModelVersion,
    units: Sequence[Cell | Image],
    located: dict[int, list[Box] | None],
    predictions: Sequence[CellPrediction],
) -> None:
    """One chunk's results in one transaction: the cells found in its fields (and the fields
    marked located), every prediction, the batch's progress advanced (an F() increment, so
    workers on other shards of the batch add theirs) by the fields it located and the single
    cells it classified, and the shard's heartbeat. A delivery racing this one on the same
    shard (re-offered from a worker thought dead) may have classified some of the same cells:
    the figure is then high until _finish counts exactly, and never above the batch's total."""
    now = timezone.now()
    fields = [unit.pk for unit in units if isinstance(unit, Image)]
    with transaction.atomic():
        # The chunk's fields still to locate, locked: a racing delivery that located one first
        # wins, and this one drops that field's rows (on SQLite the IMMEDIATE transaction holds
        # the write lock already; on PostgreSQL the row locks make a racer wait, then re-read).
        free = (
            set(
                Image.objects.select_for_update()
                .filter(pk__in=fields, located_at__isnull=True)
                .values_list("pk", flat=True)
            )
            if fields
            else set()
        )
        cells: list[Cell | None] = []  # None: a row whose field another delivery saved first
        found: list[Cell] = []
        # (kind, white cells) -> the fields to mark so: one UPDATE per distinct count.
        marks: dict[tuple[str, int], list[int]] = defaultdict(list)
        for unit in units:
            if isinstance(unit, Cell):
                cells.append(unit)
                continue
            boxes = located[unit.pk]
            if boxes is None:  # a close-up of one cell after all
                new = [Cell(image=unit, box=None, origin=Cell.Origin.UPLOAD)]
                mark = (Image.Kind.CELL, 1)
            else:
                new = [Cell(image=unit, box=list(box), origin=Cell.Origin.LOCATED) for box in boxes]
                mark = (Image.Kind.FIELD, len(boxes))
            if unit.pk not in free:
                cells += [None] * len(new)
                continue
            found += new
            cells += new
            marks[mark].append(unit.pk)
        for (kind, white_cells), pks in marks.items():
            Image.objects.filter(pk__in=pks).update(
                kind=kind, located_at=now, white_cells=white_cells
            )
        # The uncompressed copies of the fields located here are no longer needed: their rows
        # forget them in this transaction, the files go once it has committed (a crash between
        # the two leaves a stray file, never a row pointing at a missing one).
        spent = [
            unit
            for unit in units
            if isinstance(unit, Image)
            and unit.pk in free
            and unit.model_input
            and unit.model_input_geometry == FIELD_COPY
        ]
        if spent:
            Image.objects.filter(pk__in=[unit.pk for unit in spent]).update(
                model_input="", model_input_geometry=""
            )
            names = [str(unit.model_input.name) for unit in spent]
            transaction.on_commit(lambda: _delete_files(names))
        Cell.objects.bulk_create(found)  # sets each new cell's pk: its prediction refers to it
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
                if cell is not None
            ],
            ignore_conflicts=True,
        )
        advanced = len(free) + len(
            {
                unit.image_id
                for unit in units
                if isinstance(unit, Cell) and unit.image.kind == Image.Kind.CELL
            }
        )
        Batch.objects.filter(pk=batch_id).update(
            processed_images=Least(F("processed_images") + advanced, F("total_images")),
            heartbeat_at=now,
            stalled_attempts=0,
        )
        Shard.objects.filter(pk=shard_id).update(heartbeat_at=now, deliveries=0)


def _delete_files(names: Sequence[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete %s", name, exc_info=True)


def _images_done(*, batch_id: int, model_version: ModelVersion) -> int:
    """Accepted images with nothing left to do: fields located (their cells were classified in
    the same transaction) and single cells with a prediction from the batch's model."""
    return (
        Image.objects.filter(batch_id=batch_id, status=Image.Status.OK)
        .filter(
            Q(kind=Image.Kind.FIELD, located_at__isnull=False)
            | Q(kind=Image.Kind.CELL, cells__predictions__model_version=model_version)
        )
        .distinct()
        .count()
    )


def _finish(*, batch_id: int, classified: int, check: BatchCheck | None) -> Outcome:
    """The verdict, the preliminary report and done, in one transaction: a worker that dies
    before it commits leaves the batch processing with its verdict pending, and the next
    delivery checks again."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().select_related("model_version").get(pk=batch_id)
        if batch.status != Batch.Status.PROCESSING:
            return Outcome(batch.status, classified, 0)
        record_check(batch, check)
        if batch.ood_check == Batch.Check.PENDING:
            # Pending with no verdict at hand would leave every cell pending in a done batch.
            raise ServiceError(f"Batch {batch_id} finished without its batch check")
        write_preliminary_report(batch=batch)
        batch.status = Batch.Status.DONE
        batch.finished_at = timezone.now()
        batch.stalled_attempts = 0
        batch.processed_images = _images_done(batch_id=batch_id, model_version=batch.model_version)
        batch.save(update_fields=["status", "finished_at", "stalled_attempts", "processed_images"])
        monitoring.count(name=monitoring.BATCHES_DONE)
        monitoring.count(name=monitoring.IMAGES_CLASSIFIED, by=batch.processed_images)
        webhooks.batch_finished_on_commit(batch_id=batch_id)
    return Outcome(Batch.Status.DONE, classified, 0)


def lab_slug_of(*, batch_id: int) -> str:
    """The slug of a batch's lab, for its log lines ("" when the batch is gone)."""
    slug = Batch.objects.filter(pk=batch_id).values_list("case__lab__slug", flat=True).first()
    return slug or ""


def release_claimed_shards() -> None:
    """Give back the shards this worker process holds (its task ran out of time): queued and
    offered again; what was saved stays saved."""
    for batch_id, queue in release_shards():
        app.send_task(PROCESS_BATCH_TASK, args=(batch_id,), queue=queue)


def failure_reason(exc: BaseException) -> str:
    """What the lab reads on a failed batch: a service's own message, else the error itself."""
    if isinstance(exc, ServiceError):
        return str(exc)
    return f"The worker stopped on an unexpected error: {type(exc).__name__}: {exc}"


def gave_up(deliveries: int) -> str:
    return (
        f"Gave up after {deliveries} deliveries that made no progress; the batch may contain "
        "an image that stops the worker."
    )


def mark_batch_failed(*, batch_id: int, reason: str) -> None:
    with transaction.atomic():
        already = Batch.objects.filter(pk=batch_id, status=Batch.Status.FAILED).exists()
        failed = (
            Batch.objects.filter(pk=batch_id)
            .exclude(status__in=[Batch.Status.DONE, Batch.Status.CANCELLED])
            .update(status=Batch.Status.FAILED, error=reason, finished_at=timezone.now())
        )
        if failed and not already:
            monitoring.count(name=monitoring.BATCHES_FAILED)
            webhooks.batch_finished_on_commit(batch_id=batch_id)
