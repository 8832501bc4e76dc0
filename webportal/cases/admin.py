from django.contrib import admin

from webportal.cases.models import Batch, Case, ModelVersion, Patient


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin[ModelVersion]):
    list_display = ["name", "architecture", "checkpoint_sha256", "threshold", "created_at"]
    readonly_fields = [field.name for field in ModelVersion._meta.fields]


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin[Case]):
    list_display = ["accession_number", "lab", "patient", "created_at"]
    list_filter = ["lab"]


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin[Batch]):
    list_display = ["id", "case", "status", "priority", "total_images", "processed_images"]
    list_filter = ["status", "priority"]


admin.site.register(Patient)
