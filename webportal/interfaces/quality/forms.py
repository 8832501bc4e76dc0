from __future__ import annotations

from typing import Any

from django import forms

from webportal.cases.models import ModelVersion


class AgreementForm(forms.Form):
    model_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.none(), empty_label=None, label="Model"
    )
    date_from = forms.DateField(
        required=False, label="Signed from", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="to", widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, model_versions: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model_version"].queryset = model_versions  # type: ignore[attr-defined]
