from __future__ import annotations

from typing import Any

from django import forms

from webportal.accounts.models import Role
from webportal.cases.models import ModelVersion


class AddMemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Role.choices, initial=Role.STAFF)
    password = forms.CharField(
        required=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=(
            "Only to create a new account now. Without it, or when the name is taken, the name "
            "is invited: it joins when that account accepts."
        ),
    )


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class ActiveModelForm(forms.Form):
    model_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.none(),
        required=False,
        empty_label="The newest shared model (a newer one only by choosing it here)",
        label="Model for new batches",
    )
    reason = forms.CharField(
        required=False,
        max_length=500,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Why use a model without a batch guard",
        help_text="Needed only for a model without a batch guard; kept in the audit trail.",
    )

    def __init__(self, *args: Any, models: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model_version"].queryset = models  # type: ignore[attr-defined]


class ReferenceRangeForm(forms.Form):
    label = forms.CharField(max_length=100, widget=forms.HiddenInput)
    low_percent = forms.FloatField(min_value=0, max_value=100, label="Low %")
    high_percent = forms.FloatField(min_value=0, max_value=100, label="High %")
    # Optional: the absolute count's own interval, and a sex and age band (issue 19).
    low_absolute = forms.FloatField(min_value=0, required=False, label="Low x10^9/L")
    high_absolute = forms.FloatField(min_value=0, required=False, label="High x10^9/L")
    sex = forms.ChoiceField(
        choices=[("", "Any sex"), ("female", "Female"), ("male", "Male")], required=False
    )
    age_from_years = forms.IntegerField(min_value=0, max_value=150, required=False)
    age_to_years = forms.IntegerField(min_value=1, max_value=150, required=False)


class LabDetailsForm(forms.Form):
    address = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), required=False, help_text="As printed."
    )
    accreditation = forms.CharField(
        max_length=100,
        required=False,
        label="Accreditation number",
        help_text="E.g. the ISO 15189 accreditation body's number for the lab.",
    )
    director = forms.CharField(
        max_length=200, required=False, label="Laboratory director", help_text="Name and title."
    )
    nrbc_correction_from = forms.IntegerField(
        min_value=1,
        max_value=100,
        required=False,
        label="Correct the WBC count from (NRBC per 100 WBC)",
        help_text="When the differential counts this many nucleated red cells per 100 WBC or "
        "more, the report corrects the analyser's WBC count for them (WBC x 100 / (100 + "
        "NRBC)). Leave empty if the lab's analyser already excludes them.",
    )


class PersonForm(forms.Form):
    first_name = forms.CharField(max_length=150, required=False)
    last_name = forms.CharField(max_length=150, required=False)
    title = forms.CharField(max_length=100, required=False)
