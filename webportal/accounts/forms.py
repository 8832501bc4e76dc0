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
        help_text="Only for a new user: an existing user keeps their password.",
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
