from django.contrib import admin

from webportal.admin import ReadOnlyAdmin
from webportal.cases.models import (
    Batch,
    Case,
    Cell,
    Image,
    ModelVersion,
    Patient,
    Prediction,
    Shard,
)


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin[ModelVersion]):
    """Read-only: models are registered by `manage.py register_model` or adaptation, and a
    lab's model is chosen by its admin in the portal (audited), never here."""

    list_display = ["name", "lab", "architecture", "checkpoint_sha256", "threshold", "created_at"]


# Clinical records: read-only here; the portal's services write them.


@admin.register(Patient)
class PatientAdmin(ReadOnlyAdmin[Patient]):
    list_display = ["external_id", "lab", "created_at"]
    list_filter = ["lab"]
    list_select_related = ["lab"]
    search_fields = ["external_id"]


@admin.register(Case)
class CaseAdmin(ReadOnlyAdmin[Case]):
    list_display = ["accession_number", "lab", "patient", "created_at"]
    list_filter = ["lab"]
    list_select_related = ["lab", "patient"]
    search_fields = ["accession_number"]


@admin.register(Batch)
class BatchAdmin(ReadOnlyAdmin[Batch]):
    list_display = ["id", "case", "status", "priority", "total_images", "processed_images"]
    list_filter = ["status", "priority"]
    list_select_related = ["case"]


@admin.register(Shard)
class ShardAdmin(ReadOnlyAdmin[Shard]):
    """Who works which part of a batch: the claimer (hostname:pid), its heartbeat, deliveries."""

    list_display = [
        "id",
        "batch",
        "lab",
        "priority",
        "status",
        "images",
        "claimed_by",
        "claimed_at",
        "heartbeat_at",
        "deliveries",
    ]
    list_filter = ["status", "priority"]
    list_select_related = ["batch__case", "lab"]


@admin.register(Image)
class ImageAdmin(ReadOnlyAdmin[Image]):
    list_display = ["id", "batch", "original_name", "status", "width", "height"]
    list_filter = ["status"]
    list_select_related = ["batch__case"]


@admin.register(Cell)
class CellAdmin(ReadOnlyAdmin[Cell]):
    list_display = ["id", "image", "box"]
    list_select_related = ["image"]


@admin.register(Prediction)
class PredictionAdmin(ReadOnlyAdmin[Prediction]):
    list_display = ["id", "cell", "model_version", "label", "confidence", "created_at"]
    list_filter = ["label"]
    list_select_related = ["cell__image", "model_version"]
