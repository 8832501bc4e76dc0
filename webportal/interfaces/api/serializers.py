from __future__ import annotations

from dataclasses import asdict
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import reverse

from webportal.cases.batch_check import describe
from webportal.cases.models import Batch, Case, Image, Patient
from webportal.cases.selectors import rejected_images
from webportal.cases.services import PatientDetails
from webportal.interfaces.api.strict import StrictStrings
from webportal.reports.results import ABSOLUTE_LOINC, class_key
from webportal.reports.services import latest_report


class RejectedFileSerializer(serializers.ModelSerializer[Image]):
    class Meta:
        model = Image
        fields = ["original_name", "reject_reason"]


class DifferentialRowSerializer(serializers.Serializer[Any]):
    """One row of a report's differential (webportal.reports.differential.Row)."""

    label = serializers.CharField()  # type: ignore[assignment]
    group = serializers.CharField(help_text="wbc, erythroblast, other, unidentified, ...")
    count = serializers.IntegerField()
    percent = serializers.FloatField(
        allow_null=True,
        help_text="% of leukocytes (per 100 WBC for erythroblasts and smudge cells), rounded "
        "on its own to one decimal (the column may add up to 99.9 or 100.1).",
    )
    absolute = serializers.FloatField(allow_null=True, help_text="x10^9/L, with a WBC count.")
    low = serializers.FloatField(allow_null=True, help_text="Reference range used for the flag.")
    high = serializers.FloatField(allow_null=True)
    flag = serializers.CharField(
        allow_blank=True, help_text='"H", "L" or "": decided on the unrounded value.'
    )
    ci_low = serializers.FloatField(
        required=False,
        allow_null=True,
        help_text="Exact binomial (Clopper-Pearson) 95% interval of `percent`, low end, % "
        "(CLSI H20-A2, as Rümke's table); leukocyte rows with leukocytes counted.",
    )
    ci_high = serializers.FloatField(required=False, allow_null=True)
    loinc = serializers.CharField(
        required=False, allow_blank=True, help_text="LOINC code of the /100 leukocytes result."
    )
    critical = serializers.BooleanField(
        required=False, help_text="A category the lab marks critical, counted."
    )
    absolute_low = serializers.FloatField(
        allow_null=True, default=None, help_text="Absolute reference range (x10^9/L) used."
    )
    absolute_high = serializers.FloatField(allow_null=True, default=None)
    absolute_flag = serializers.CharField(
        allow_blank=True, default="", help_text='The absolute count\'s "H", "L" or "".'
    )
    unit = serializers.SerializerMethodField(
        help_text='UCUM unit of `percent`: "%" (of leukocytes), "/100{WBCs}" (per 100 '
        'leukocytes), null for rows counted apart (cells seen, "{cells}" in FHIR and HL7).'
    )
    absolute_unit = serializers.SerializerMethodField(
        help_text='UCUM unit of `absolute`: "10*9/L" when there is one, else null.'
    )
    absolute_loinc = serializers.SerializerMethodField(
        help_text="LOINC code of the absolute count ([#/volume] in Blood), where LOINC has one."
    )

    def get_unit(self, row: dict[str, Any]) -> str | None:
        return {"wbc": "%", "per_100_wbc": "/100{WBCs}"}.get(str(row.get("group")))

    def get_absolute_unit(self, row: dict[str, Any]) -> str | None:
        return "10*9/L" if row.get("absolute") is not None else None

    def get_absolute_loinc(self, row: dict[str, Any]) -> str | None:
        code = ABSOLUTE_LOINC.get(class_key(str(row.get("label", ""))))
        return code[0] if code and row.get("group") == "wbc" else None


class FlagSerializer(serializers.Serializer[Any]):
    code = serializers.CharField()
    message = serializers.CharField()


class BatchCheckSerializer(serializers.Serializer[Any]):
    """The batch guard's verdict (webportal.cases.batch_check.BatchCheckSummary)."""

    status = serializers.ChoiceField(
        choices=[c for c in Batch.Check.values if c != Batch.Check.NOT_CHECKED],
        help_text=(
            "`flagged`: the images are unlike anything the model was validated on, so no cell "
            "is auto-accepted; `passed`: like them; `pending`: decided when every cell is "
            "classified (nothing auto-accepted until then); `too_few`: too few cells to judge; "
            "`no_guard`: the model has no batch check."
        ),
    )
    status_display = serializers.CharField()
    flagged = serializers.BooleanField()
    auto_accepts = serializers.BooleanField(
        help_text="Whether cells at or above the model's threshold count without a review."
    )
    score = serializers.FloatField(
        allow_null=True, help_text="Mean distance of the checked cells from the validation data."
    )
    threshold = serializers.FloatField(allow_null=True, help_text="Flagged above this score.")
    threshold_batch_size = serializers.IntegerField(
        allow_null=True, help_text="The calibrated batch size (cells) the threshold is for."
    )
    cells_checked = serializers.IntegerField(allow_null=True)
    headline = serializers.CharField()
    explanation = serializers.CharField(help_text="What the verdict means, for a lab user.")
    figures = serializers.CharField(
        allow_blank=True, help_text="The score against the limit, in words; empty without them."
    )


class BatchSerializer(serializers.ModelSerializer[Batch]):
    case = serializers.IntegerField(source="case_id", read_only=True)
    accession_number = serializers.CharField(source="case.accession_number", read_only=True)
    model_version = serializers.CharField(source="model_version.name", read_only=True)
    progress_percent = serializers.IntegerField(read_only=True)
    rejected = serializers.SerializerMethodField()
    differential = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    report_url = serializers.SerializerMethodField()
    batch_check = serializers.SerializerMethodField()

    class Meta:
        model = Batch
        fields = [
            "id",
            "url",
            "case",
            "accession_number",
            "priority",
            "image_kind",
            "status",
            "progress_percent",
            "total_images",
            "processed_images",
            "rejected_files",
            "error",
            "model_version",
            "created_at",
            "started_at",
            "finished_at",
            "rejected",
            "differential",
            "report_url",
            "batch_check",
        ]
        read_only_fields = fields

    @extend_schema_field(BatchCheckSerializer(allow_null=True))
    def get_batch_check(self, batch: Batch) -> dict[str, Any] | None:
        """The batch guard's verdict; None until a worker has taken the batch (and for
        batches classified before batches were checked)."""
        summary = describe(batch)
        return None if summary is None else dict(BatchCheckSerializer(asdict(summary)).data)

    @extend_schema_field(RejectedFileSerializer(many=True))
    def get_rejected(self, batch: Batch) -> list[dict[str, Any]]:
        rejected = rejected_images(batch=batch)
        return list(RejectedFileSerializer(rejected, many=True).data)

    @extend_schema_field(DifferentialRowSerializer(many=True, allow_null=True))
    def get_differential(self, batch: Batch) -> list[dict[str, Any]] | None:
        """The latest report's snapshot; None until the batch has one."""
        report = latest_report(batch=batch)
        if report is None:
            return None
        return list(DifferentialRowSerializer(report.differential, many=True).data)

    def get_url(self, batch: Batch) -> str:
        return reverse("api:batch_detail", args=[batch.pk], request=self.context.get("request"))

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_report_url(self, batch: Batch) -> str | None:
        if not batch.reports.exists():
            return None
        return reverse("api:batch_report", args=[batch.pk], request=self.context.get("request"))


class BatchCreateSerializer(serializers.Serializer[Any]):
    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True),
        min_length=1,
        help_text="Images (JPEG, PNG, TIFF, BMP) and/or ZIP archives of them; repeat the field.",
    )
    priority = serializers.ChoiceField(choices=Batch.Priority.choices, default="routine")
    image_kind = serializers.ChoiceField(
        choices=Batch.ImageKind.choices,
        default=Batch.ImageKind.AUTO,
        help_text="What the images are: `field` (whole smear fields: every white cell is "
        "located, cropped and classified), `cell` (each image is one white cell), or `auto` "
        "(decided per image from its size and content), as the portal's upload form.",
        error_messages={
            "invalid_choice": '"{input}" is not an image kind; use one of: '
            + ", ".join(Batch.ImageKind.values)
            + "."
        },
    )


def _refuse_unknown_keys(data: Any, known: Any, *, what: str) -> None:
    """A misspelt key ("birthdate") is a 400 naming it, not a detail silently dropped."""
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise serializers.ValidationError(
            f"Unknown field{'s' if len(unknown) > 1 else ''} in {what}: {', '.join(unknown)}. "
            f"Known: {', '.join(known)}."
        )


class PatientInputSerializer(StrictStrings, serializers.Serializer[Any]):
    identifier = serializers.CharField(max_length=100, help_text="Patient id / MRN.")
    family_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    given_name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    birth_date = serializers.DateField(required=False, allow_null=True, help_text="YYYY-MM-DD.")
    sex = serializers.ChoiceField(
        choices=Patient.Sex.values,
        required=False,
        allow_blank=True,
        help_text="Administrative sex (FHIR AdministrativeGender codes).",
        error_messages={
            "invalid_choice": '"{input}" is not a sex the lab records; use one of: '
            + ", ".join(Patient.Sex.values)
            + "."
        },
    )


PATIENT_SCHEMA = {
    "oneOf": [
        {"type": "string", "maxLength": 100, "description": "The patient id / MRN alone."},
        {
            "type": "object",
            "required": ["identifier"],
            "additionalProperties": False,
            "properties": {
                "identifier": {"type": "string", "maxLength": 100},
                "family_name": {"type": "string", "maxLength": 100},
                "given_name": {"type": "string", "maxLength": 100},
                "birth_date": {"type": "string", "format": "date", "nullable": True},
                "sex": {"type": "string", "enum": [*Patient.Sex.values, ""]},
            },
        },
    ],
    "description": "The patient id / MRN, or the patient with name, birth date and sex.",
}


@extend_schema_field(PATIENT_SCHEMA)
class PatientField(serializers.Field):  # type: ignore[type-arg]
    """`patient` as a string (the identifier, as ever) or as an object with the details."""

    default_error_messages = {
        "type": 'Give the patient as its identifier ("MRN-42") or as an object '
        '{{"identifier", "family_name", "given_name", "birth_date", "sex"}}.',
        "max_length": "A patient id has at most 100 characters.",
    }

    def to_internal_value(self, data: Any) -> PatientDetails:
        if isinstance(data, str):
            if len(data) > 100:
                self.fail("max_length")
            return PatientDetails(identifier=data)
        if not isinstance(data, dict):
            self.fail("type")
        _refuse_unknown_keys(data, PatientInputSerializer().fields, what="patient")
        details = PatientInputSerializer(data=data)
        details.is_valid(raise_exception=True)
        return PatientDetails(**details.validated_data)

    def to_representation(self, value: Any) -> Any:
        return value


class SpecimenInputSerializer(StrictStrings, serializers.Serializer[Any]):
    type = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text='The primary sample, e.g. "Venous blood, EDTA".',
    )
    collected_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="ISO 8601; without an offset, lab time."
    )
    received_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="ISO 8601; not before collected_at."
    )

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            _refuse_unknown_keys(data, self.fields, what="specimen")
        return super().to_internal_value(data)


class CaseBriefSerializer(serializers.ModelSerializer[Case]):
    patient = serializers.CharField(source="patient.external_id", default=None, read_only=True)

    class Meta:
        model = Case
        fields = ["id", "accession_number", "patient", "created_at"]
        read_only_fields = fields


class CaseSerializer(serializers.ModelSerializer[Case]):
    lab = serializers.CharField(source="lab.slug", read_only=True)
    patient = serializers.CharField(
        source="patient.external_id", default=None, read_only=True, allow_null=True
    )
    status = serializers.CharField(
        source="latest_batch_status",
        read_only=True,
        help_text="The status of the case's latest batch, or `new` before its first batch.",
    )
    url = serializers.SerializerMethodField()
    specimen = serializers.SerializerMethodField()

    class Meta:
        model = Case
        fields = [
            "id",
            "url",
            "lab",
            "accession_number",
            "patient",
            "specimen",
            "requester",
            "clinical_note",
            "status",
            "created_at",
        ]
        read_only_fields = fields

    def get_url(self, case: Case) -> str:
        return reverse("api:case_detail", args=[case.pk], request=self.context.get("request"))

    @extend_schema_field(SpecimenInputSerializer)
    def get_specimen(self, case: Case) -> dict[str, Any]:
        """The primary sample; its id is the case's accession number."""
        field = serializers.DateTimeField()
        return {
            "type": case.specimen_type,
            "collected_at": field.to_representation(case.specimen_collected_at)
            if case.specimen_collected_at
            else None,
            "received_at": field.to_representation(case.specimen_received_at)
            if case.specimen_received_at
            else None,
        }


class CaseCreateSerializer(StrictStrings, serializers.Serializer[Any]):
    accession_number = serializers.CharField(max_length=100)
    patient = PatientField(required=False)
    specimen = SpecimenInputSerializer(required=False)
    requester = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="Who asked for the examination (clinician, ward or service).",
    )
    clinical_note = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    lab = serializers.SlugField(
        required=False,
        help_text="The lab's slug; only needed by a portal user who belongs to several labs "
        "(a token always acts in its own lab).",
    )


class PatientSerializer(serializers.ModelSerializer[Patient]):
    lab = serializers.CharField(source="lab.slug", read_only=True)
    sex = serializers.CharField(
        read_only=True,
        help_text="female, male, other or unknown (FHIR AdministrativeGender); empty when "
        "not given.",
    )

    class Meta:
        model = Patient
        fields = [
            "id",
            "external_id",
            "family_name",
            "given_name",
            "birth_date",
            "sex",
            "lab",
            "created_at",
        ]
        read_only_fields = fields


class PatientDetailSerializer(PatientSerializer):
    cases = serializers.SerializerMethodField()

    class Meta(PatientSerializer.Meta):
        fields = [*PatientSerializer.Meta.fields, "cases"]
        read_only_fields = fields

    @extend_schema_field(CaseSerializer(many=True))
    def get_cases(self, patient: Patient) -> list[dict[str, Any]]:
        """The case history, newest first."""
        cases = self.context["cases"]
        return list(CaseSerializer(cases, many=True, context=self.context).data)
