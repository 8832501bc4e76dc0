"""Clinical records: cases, batches of images, cells and the model's predictions."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

# The few-cell adaptation's candidates (ml.adapt.CANDIDATES), in a lab admin's words.
ADAPTATION_CANDIDATES = {
    "lab-bn": "the lab's own picture statistics (the network's BatchNorm statistics "
    "re-estimated on the lab's pictures, colours left as they are)",
    "reinhard": "colour normalisation (each picture's colours moved to those of the stain the "
    "model was trained on, the network's trained statistics kept)",
}


def adaptation_choice_text(metrics: dict[str, Any]) -> str:
    """Which of the few-cell adaptation's candidates (ml.adapt.adapt_to_cells) was kept and
    why, in a sentence a lab admin can follow; "" for a model without the record (a shared
    model, a fine-tune, an adaptation from before there was a choice)."""
    chosen, candidates = metrics.get("chosen"), metrics.get("candidates") or {}
    if chosen not in candidates:
        return ""
    mine = candidates[chosen]
    said = ADAPTATION_CANDIDATES.get(str(chosen), str(chosen))
    text = f"Adapted with {said}"
    others = [(k, v) for k, v in candidates.items() if k != chosen]
    if not others:
        skipped = metrics.get("skipped") or {}
        why = "; ".join(f"{ADAPTATION_CANDIDATES.get(k, k)}: {v}" for k, v in skipped.items())
        return text + (f", the only one that could be tried ({why})." if why else ".")
    right, cells = mine["oof_right"], mine["oof_cells"]
    comparisons = "; ".join(
        f"{v['oof_right']} of {v['oof_cells']} with {ADAPTATION_CANDIDATES.get(k, k)}"
        for k, v in others
    )
    text += (
        f": with each reviewed cell classified by a model adapted without it, this way named "
        f"{right} of {cells} right, against {comparisons}"
    )
    if all(v["oof_right"] == right for _, v in others):
        text += " (a tie: it was kept for being more confident on the cells it got right)"
    return text + "."


class ModelVersion(models.Model):
    """A registered classifier checkpoint; classes come from the checkpoint, never from code."""

    name = models.CharField(max_length=200)
    architecture = models.CharField(max_length=100)
    classes = models.JSONField()
    checkpoint_path = models.CharField(max_length=500)
    checkpoint_sha256 = models.CharField(max_length=64, unique=True)
    input_size = models.PositiveIntegerField()
    # How an image is fitted to input_size (ml.transforms.eval_geometry): "crop" or "pad".
    resize = models.CharField(max_length=10, default="crop")
    mean = models.JSONField()
    std = models.JSONField()
    temperature = models.FloatField(default=1.0)
    # Below this calibrated confidence a cell counts as "unidentified" until a human looks.
    threshold = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict)
    # The checkpoint's batch guard (ml.ood), as registered: {"thresholds": {batch size: limit}}
    # with batch size a string ("1" is the per-cell limit); {} = the checkpoint has none. A lab
    # admin must state why to make a model without one the lab's model (accounts.services).
    guard = models.JSONField(default=dict, blank=True)
    # None: a shared model (shipped, registered by `manage.py register_model`) that every lab
    # may choose. A lab: a model adapted to that lab's reviewed cells (webportal.adaptation):
    # only that lab sees and may activate it, and it is never a lab's default by being newest.
    lab = models.ForeignKey(
        "accounts.Lab", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.checkpoint_sha256[:12]})"

    @property
    def has_guard(self) -> bool:
        return bool(self.guard.get("thresholds"))

    @property
    def auto_accepts_nothing(self) -> bool:
        """A threshold above every confidence (a probability is at most 1): the one rule
        (`selectors.current_label`) leaves every cell unidentified until reviewed. A few-cell
        adaptation writes one (ml.adapt.NO_AUTO_ACCEPT) when its reviewed cells are too few
        to bound the accuracy of the cells it would accept. None is the opposite: no cell is
        held for its confidence."""
        return self.threshold is not None and self.threshold > 1.0

    @property
    def adaptation_choice(self) -> str:
        """How a few-cell adaptation adapted this model and why (`adaptation_choice_text`)."""
        return adaptation_choice_text(self.metrics)

    @property
    def guard_design(self) -> str:
        """What the guard reads, in words ("" when the row predates it being recorded)."""
        design = self.guard.get("design")
        if design == "pooled":
            return "pooled features"
        if design == "pooled + early":
            blocks = ", ".join(str(t) for t in self.guard.get("taps", []))
            return f"pooled + early (pooled features and the channel statistics of blocks {blocks})"
        return ""

    def guard_threshold(self, cells: int) -> float | None:
        """The guard's flag limit for a batch of `cells` cells (None: no guard or no limit)."""
        limit = self.guard.get("thresholds", {}).get(str(cells))
        return None if limit is None else float(limit)


class Patient(models.Model):
    class Sex(models.TextChoices):
        """Administrative sex, FHIR R4 AdministrativeGender's codes; "" when not given."""

        FEMALE = "female", "Female"
        MALE = "male", "Male"
        OTHER = "other", "Other"
        UNKNOWN = "unknown", "Unknown"

    lab = models.ForeignKey("accounts.Lab", on_delete=models.PROTECT, related_name="patients")
    external_id = models.CharField("patient id / MRN", max_length=100)
    # The second identifier a report carries beside the MRN (ISO 15189:2022 7.4.1.6): the
    # name and/or the birth date. All optional: a case may arrive with the MRN alone.
    family_name = models.CharField(max_length=100, blank=True)
    given_name = models.CharField(max_length=100, blank=True)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=10, choices=Sex.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["lab", "external_id"], name="patient_id_unique_per_lab")
        ]

    def __str__(self) -> str:
        return self.external_id

    @property
    def name(self) -> str:
        """The name as reports print it, "FAMILY, Given"; empty when neither is known."""
        family, given = self.family_name.upper(), self.given_name
        return ", ".join(part for part in (family, given) if part)


class Case(models.Model):
    lab = models.ForeignKey("accounts.Lab", on_delete=models.PROTECT, related_name="cases")
    patient = models.ForeignKey(
        Patient, null=True, blank=True, on_delete=models.PROTECT, related_name="cases"
    )
    accession_number = models.CharField(max_length=100)
    clinical_note = models.TextField(blank=True)
    # The primary sample (ISO 15189:2022 7.4.1.6): its type, when it was collected and when
    # the lab received it; the accession number is the specimen's id. And who asked for it.
    specimen_type = models.CharField(max_length=100, blank=True)
    specimen_collected_at = models.DateTimeField(null=True, blank=True)
    specimen_received_at = models.DateTimeField(null=True, blank=True)
    requester = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # "h-1" and "H-1" are one accession number: services.create_case stores it
            # normalised (spaces) and this refuses a second one differing only in case.
            models.UniqueConstraint(
                "lab",
                Lower("accession_number"),
                name="accession_number_unique_per_lab_any_case",
            )
        ]

    def __str__(self) -> str:
        return self.accession_number


class Batch(models.Model):
    class Status(models.TextChoices):
        # Uploaded and stored, but not queued: it has the same images as an earlier batch of
        # its case, and waits for the user to confirm it (services.confirm_batch) or cancel it.
        HELD = "held", "Awaiting confirmation"
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Priority(models.TextChoices):
        ROUTINE = "routine", "Routine"
        STAT = "stat", "STAT"

    class ImageKind(models.TextChoices):
        AUTO = "auto", "Detect (fields and single cells)"
        FIELD = "field", "Whole fields"
        CELL = "cell", "Single cells"

    class Check(models.TextChoices):
        """The batch guard's verdict (ml.ood): are these cells like the model's validation
        images? Decided once per uploaded batch, when its last cell is classified."""

        # Not claimed by a worker yet, or classified before batches were checked.
        NOT_CHECKED = "not_checked", "Not checked"
        # The model has a guard; the verdict comes when every cell is classified. Until then
        # no cell is auto-accepted (selectors.current_label).
        PENDING = "pending", "Checking"
        NO_GUARD = "no_guard", "No batch check (the model has none)"
        # Fewer cells than the smallest batch the guard was calibrated for (or none at all).
        TOO_FEW = "too_few", "Too few cells to check"
        PASSED = "passed", "Like the validation images"
        # Unlike anything the model was validated on: no cell is auto-accepted.
        FLAGGED = "flagged", "Unlike the validation images"

    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="batches")
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.ROUTINE)
    # What the uploaded images are: detected per image (ml.locate.image_kind), or forced.
    image_kind = models.CharField(max_length=10, choices=ImageKind.choices, default=ImageKind.AUTO)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    total_images = models.PositiveIntegerField(default=0)
    processed_images = models.PositiveIntegerField(default=0)
    rejected_files = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # Delivery bookkeeping for the queue: when the last message was sent, when a worker last
    # showed progress, and how many deliveries in a row made none (poison batches stop there).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    stalled_attempts = models.PositiveIntegerField(default=0)
    # The batch guard's verdict and its figures (pipeline.verdict.check_batch): the mean
    # out-of-distribution score of the cells checked (at most 100, evenly spaced), the flag
    # threshold used, and the calibrated batch size that threshold is for.
    ood_check = models.CharField(max_length=12, choices=Check.choices, default=Check.NOT_CHECKED)
    ood_score = models.FloatField(null=True, blank=True)
    ood_threshold = models.FloatField(null=True, blank=True)
    ood_threshold_size = models.PositiveIntegerField(null=True, blank=True)
    ood_cells_checked = models.PositiveIntegerField(null=True, blank=True)
    ood_checked_at = models.DateTimeField(null=True, blank=True)
    # Each checked cell's own out-of-distribution score ({cell id: score}; every cell of a batch
    # of up to 100, else the 100 checked) and the guard's per-cell limit: a cell above it is
    # held for review (unidentified) even in a batch that passed.
    ood_cell_scores = models.JSONField(default=dict, blank=True)
    ood_cell_threshold = models.FloatField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "batches"
        indexes = [models.Index(fields=["status", "priority"], name="batch_status_priority")]

    def __str__(self) -> str:
        return f"Batch {self.pk} of {self.case}"

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.DONE, self.Status.FAILED, self.Status.CANCELLED}

    @property
    def queue(self) -> str:
        return "stat" if self.priority == self.Priority.STAT else "routine"

    @property
    def ood_flagged(self) -> bool:
        """These images are unlike anything the model was validated on: nothing auto-accepted."""
        return self.ood_check == self.Check.FLAGGED

    @property
    def progress_percent(self) -> int:
        if not self.total_images:
            return 100 if self.is_finished else 0
        return round(100 * self.processed_images / self.total_images)


class Shard(models.Model):
    """A range of a batch's accepted images that one worker classifies at a time.

    A batch is split into shards of at most BATCH_SHARD_IMAGES images (a field and the cells
    located in it belong to one shard) when it is queued, so one large batch uses every
    worker. A worker claims a shard with a conditional UPDATE (webportal.pipeline.shards):
    which one is decided here, in the database, not by the broker's order: STAT first, then
    the lab served least recently (fair share), then the oldest batch.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        DONE = "done", "Done"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="shards")
    # The batch's lab and priority, copied: the claim orders on them in one indexed query.
    lab = models.ForeignKey("accounts.Lab", on_delete=models.PROTECT, related_name="+")
    priority = models.CharField(max_length=10, choices=Batch.Priority.choices)
    # Image ids first..last (inclusive) of the batch: the shard's work is its accepted images
    # in that range (cells still without a prediction, fields not yet located).
    first_image_id = models.PositiveBigIntegerField()
    last_image_id = models.PositiveBigIntegerField()
    images = models.PositiveIntegerField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    # Who holds it (hostname:pid of the worker process) and when it was claimed; the heartbeat
    # moves with every chunk saved; claims in a row without progress (poison shards stop at
    # BATCH_MAX_STALLED_ATTEMPTS).
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    deliveries = models.PositiveIntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["batch_id", "first_image_id"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "first_image_id"], name="one_shard_per_start")
        ]
        indexes = [
            models.Index(fields=["status", "priority"], name="shard_status_priority"),
            models.Index(fields=["lab", "claimed_at"], name="shard_lab_claimed"),
        ]

    def __str__(self) -> str:
        return f"Shard {self.first_image_id}-{self.last_image_id} of batch {self.batch_id}"


def image_upload_path(instance: Any, filename: str) -> str:
    # Generated names only: nothing a user typed reaches the file system.
    return f"batches/{instance.batch_id}/{filename}"


class Image(models.Model):
    class Status(models.TextChoices):
        OK = "ok", "Accepted"
        REJECTED = "rejected", "Rejected"

    class Kind(models.TextChoices):
        FIELD = "field", "Whole field"
        CELL = "cell", "Single cell"

    batch = models.ForeignKey(Batch, on_delete=models.PROTECT, related_name="images")
    # A single cell has one Cell (box None) from the upload on; a field gets one Cell per white
    # cell when the worker has located them (located_at, white_cells: 0 = none found).
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.CELL)
    located_at = models.DateTimeField(null=True, blank=True)
    white_cells = models.PositiveIntegerField(null=True, blank=True)
    original_name = models.CharField(max_length=500)
    file = models.FileField(upload_to=image_upload_path, blank=True)
    # The image already fitted to its batch's model input (a small PNG the worker reads instead
    # of `file`), and that geometry (ml.transforms.geometry_key); empty for older uploads.
    model_input = models.FileField(upload_to=image_upload_path, blank=True)
    model_input_geometry = models.CharField(max_length=20, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    source_format = models.CharField(max_length=10, blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices)
    reject_reason = models.TextField(blank=True)
    # Bytes stored for this image at upload (the image and its fitted copy): the lab's
    # storage quota (LAB_STORAGE_QUOTA_BYTES) adds these up.
    stored_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.original_name


class Cell(models.Model):
    class Origin(models.TextChoices):
        UPLOAD = "upload", "Uploaded as one cell"
        LOCATED = "located", "Located in a field"
        REVIEWER = "reviewer", "Added by a reviewer"

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="cells")
    # (x, y, width, height) in image pixels; None means the whole image is one cell. (ml.locate
    # and its JSON use [x1, y1, x2, y2]: x = x1, width = x2 - x1.) What the classifier sees of
    # a boxed cell is ml.locate.crop_cell: a square 1.5x the box's longer side around it.
    box = models.JSONField(null=True, blank=True)
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.UPLOAD)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Cell {self.pk} of {self.image}"


class Prediction(models.Model):
    """The model's word on a cell: written once, never updated; a new model adds a new row."""

    cell = models.ForeignKey(Cell, on_delete=models.PROTECT, related_name="predictions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    label = models.CharField(max_length=100)
    confidence = models.FloatField()
    probabilities = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["cell", "model_version"], name="one_prediction_per_cell_and_model"
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.confidence:.2f})"


class Review(models.Model):
    """A person's word on a cell, kept beside the model's: append-only, it never overwrites a
    Prediction. The cell's current label is its latest review (highest id)."""

    NOT_CLASSED = "not classed"

    cell = models.ForeignKey(Cell, on_delete=models.PROTECT, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    # The reviewer's role in the lab when reviewing: a technologist's first review may not
    # overrule a pathologist's.
    reviewer_role = models.CharField(max_length=20)
    # One of the model's classes, or NOT_CLASSED ("not a cell / not classed": out of the counts).
    label = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["cell", "-id"], name="review_latest_per_cell")]

    def __str__(self) -> str:
        return f"{self.label} by {self.reviewer_id}"


class WorkerHeartbeat(models.Model):
    """A Celery worker's sign of life: its main process writes this row every
    WORKER_HEARTBEAT_SECONDS and deletes it on a warm shutdown (workers.heartbeat); /readyz
    counts the classifying workers seen within WORKER_ALIVE_SECONDS."""

    hostname = models.CharField(max_length=255, unique=True)
    queues = models.CharField(max_length=255)
    classifies = models.BooleanField(default=False)
    # The engine(s) its pool process runs the model with (ml.engine names), once it has loaded.
    engine = models.CharField(max_length=64, blank=True)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.hostname} ({self.queues})"


class MetricCounter(models.Model):
    """A counter the workers increment as things happen (batches finished, images classified),
    in the transaction that does them; /metrics reads it instead of counting tables per scrape."""

    name = models.CharField(max_length=100, unique=True)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name} = {self.value}"
