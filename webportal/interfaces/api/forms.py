from __future__ import annotations

from typing import Any

from django import forms

from webportal.accounts.models import Lab
from webportal.api.models import ApiToken, WebhookEndpoint


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. “LIS production”.")
    username = forms.CharField(
        label="Integrator account",
        max_length=150,
        help_text=(
            "A service account: created as an integrator of this lab if new; tokens act as "
            "this account, which creates, uploads, reads and subscribes, and never reviews or "
            "signs. A person makes their own token (API tokens, under their name)."
        ),
    )
    scope = forms.ChoiceField(choices=ApiToken.Scope.choices, initial=ApiToken.Scope.READ_WRITE)


class PersonalTokenForm(forms.Form):
    lab = forms.ModelChoiceField(queryset=Lab.objects.none(), empty_label=None)
    name = forms.CharField(
        max_length=100, help_text="What uses it, e.g. “my review script”.", required=False
    )
    scope = forms.ChoiceField(choices=ApiToken.Scope.choices, initial=ApiToken.Scope.READ_WRITE)

    def __init__(self, *args: Any, labs: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["lab"].queryset = labs  # type: ignore[attr-defined]


class WebhookForm(forms.Form):
    url = forms.URLField(
        label="URL",
        max_length=500,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"size": 60, "placeholder": "https://lis.example.org/hooks"}),
    )
    description = forms.CharField(
        max_length=200, required=False, widget=forms.TextInput(attrs={"size": 60})
    )
    events = forms.MultipleChoiceField(
        choices=WebhookEndpoint.Event.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every event.",
    )


class LisForm(forms.Form):
    host = forms.CharField(
        label="Host",
        max_length=253,
        widget=forms.TextInput(attrs={"size": 40, "placeholder": "lis.hospital.example"}),
    )
    port = forms.IntegerField(label="Port", min_value=1, max_value=65535, initial=2575)
    receiving_application = forms.CharField(
        label="Receiving application (MSH-5)", max_length=100, required=False
    )
    receiving_facility = forms.CharField(
        label="Receiving facility (MSH-6)", max_length=100, required=False
    )
