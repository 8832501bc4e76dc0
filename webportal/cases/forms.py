from __future__ import annotations

from typing import Any

from django import forms

from webportal.accounts.models import Lab
from webportal.cases.models import Batch


class CaseForm(forms.Form):
    lab = forms.ModelChoiceField(queryset=Lab.objects.none())
    accession_number = forms.CharField(max_length=100)
    patient_external_id = forms.CharField(
        max_length=100, required=False, label="Patient id / MRN (optional)"
    )
    clinical_note = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def __init__(self, *args: Any, labs: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
