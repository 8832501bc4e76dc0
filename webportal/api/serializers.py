from __future__ import annotations

from typing import Any

from rest_framework import serializers

from webportal.cases.models import Batch, Image


class RejectedFileSerializer(serializers.ModelSerializer[Image]):
    class Meta:
        model = Image
        fields = ["original_name", "reject_reason"]


class BatchSerializer(serializers.ModelSerializer[Batch]):
    case = serializers.CharField(source="case.accession_number")
    model_version = serializers.CharField(source="model_version.name")
    rejected = serializers.SerializerMethodField()
    differential = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = [
            "id",
            "case",
            "priority",
            "status",
            "total_images",
            "processed_images",
            "rejected_files",
            "error",
            "model_version",
            "created_at",
            "finished_at",
            "rejected",
            "differential",
        ]

    def get_rejected(self, batch: Batch) -> list[dict[str, Any]]:
        rejected = batch.images.filter(status=Image.Status.REJECTED)
        return list(RejectedFileSerializer(rejected, many=True).data)

    def get_differential(self, batch: Batch) -> list[dict[str, Any]] | None:
        """The latest report's snapshot; None until the batch has one."""
        report = batch.reports.order_by("-version").first()
        return list(report.differential) if report is not None else None


class BatchCreateSerializer(serializers.Serializer[Any]):
    files = serializers.ListField(child=serializers.FileField(allow_empty_file=True), min_length=1)
    priority = serializers.ChoiceField(choices=Batch.Priority.choices, default="routine")
