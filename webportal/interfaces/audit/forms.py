from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User

from webportal.audit.models import Action


class AuditFilterForm(forms.Form):
    action = forms.ChoiceField(required=False)
    actor = forms.ModelChoiceField(
        queryset=User.objects.none(), required=False, empty_label="Anyone"
    )
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )
    object_type = forms.ChoiceField(required=False, label="Object")
    object_id = forms.CharField(required=False, max_length=64, label="Object id")

    def __init__(self, *args: Any, actors: Any, object_types: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["actor"].queryset = actors  # type: ignore[attr-defined]
        self.fields["action"].choices = [("", "Any action"), *Action.choices]  # type: ignore[attr-defined]
        self.fields["object_type"].choices = [  # type: ignore[attr-defined]
            ("", "Any object"),
            *[(name, name) for name in object_types],
        ]
