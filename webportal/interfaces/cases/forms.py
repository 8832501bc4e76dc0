from __future__ import annotations

from typing import Any

from django import forms

from webportal.accounts.models import Lab
from webportal.cases.models import Batch, Patient
from webportal.cases.services import PatientDetails, SpecimenDetails, normalise_accession_number


class AccessionNumberField(forms.CharField):
    """Normalised (services.normalise_accession_number) before its length is checked."""

    def to_python(self, value: Any) -> str:
        return normalise_accession_number(str(super().to_python(value)))


class CaseForm(forms.Form):
    lab = forms.ModelChoiceField(queryset=Lab.objects.none())
    accession_number = AccessionNumberField(
        max_length=100,
        error_messages={
            "max_length": "An accession number has at most %(limit_value)d characters "
            "(this one has %(show_value)d)."
        },
    )
    patient_external_id = forms.CharField(
        max_length=100, required=False, label="Patient id / MRN (optional)"
    )
    # The second identifier, sex and age on the report (ISO 15189:2022 7.4.1.6), all optional.
    family_name = forms.CharField(max_length=100, required=False)
    given_name = forms.CharField(max_length=100, required=False)
    birth_date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    sex = forms.ChoiceField(choices=[("", "—"), *Patient.Sex.choices], required=False)
    specimen_type = forms.CharField(
        max_length=100,
        required=False,
        help_text='The primary sample, e.g. "Venous blood, EDTA".',
    )
    specimen_collected_at = forms.DateTimeField(
        label="Collected at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    specimen_received_at = forms.DateTimeField(
        label="Received at",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    requester = forms.CharField(
        max_length=200, required=False, help_text="Who asked for the examination."
    )
    clinical_note = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    PATIENT_FIELDS = ("patient_external_id", "family_name", "given_name", "birth_date", "sex")
    SPECIMEN_FIELDS = ("specimen_type", "specimen_collected_at", "specimen_received_at")

    def patient_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.PATIENT_FIELDS]

    def specimen_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.SPECIMEN_FIELDS]

    def patient_details(self) -> PatientDetails:
        data = self.cleaned_data
        return PatientDetails(
            identifier=data["patient_external_id"],
            family_name=data["family_name"],
            given_name=data["given_name"],
            birth_date=data["birth_date"],
            sex=data["sex"],
        )

    def specimen_details(self) -> SpecimenDetails:
        data = self.cleaned_data
        return SpecimenDetails(
            type=data["specimen_type"],
            collected_at=data["specimen_collected_at"],
            received_at=data["specimen_received_at"],
        )

    def __init__(self, *args: Any, labs: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No maxlength in the HTML: the browser would cut a pasted value silently. The server
        # refuses a long one with a message instead (the fields' max_length validators).
        for name in (
            "accession_number",
            "patient_external_id",
            "family_name",
            "given_name",
            "specimen_type",
            "requester",
        ):
            self.fields[name].widget.attrs.pop("maxlength", None)
        self.fields["lab"].queryset = labs  # type: ignore[attr-defined]
        if labs.count() == 1:
            self.fields["lab"].initial = labs.first()
            self.fields["lab"].widget = forms.HiddenInput()


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Many files in one field; validation of their content is the upload service's job."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/*,.zip"}))
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> Any:
        # Django's per-file checks would refuse the whole form for one empty file; the
        # upload service judges each file and keeps the rest.
        files = [item for item in (data if isinstance(data, list | tuple) else [data]) if item]
        if not files:
            raise forms.ValidationError("Choose at least one image or .zip file.")
        return files


class BatchUploadForm(forms.Form):
    images = MultipleFileField(label="Images or .zip archives")
    priority = forms.ChoiceField(choices=Batch.Priority.choices, initial=Batch.Priority.ROUTINE)
    image_kind = forms.ChoiceField(
        label="The images are",
        choices=Batch.ImageKind.choices,
        initial=Batch.ImageKind.AUTO,
        required=False,
        help_text="Whole fields: every white cell in them is found and classified. "
        "Detect: by each image's size and content.",
    )

    def clean_image_kind(self) -> str:
        return str(self.cleaned_data.get("image_kind") or Batch.ImageKind.AUTO)
