from __future__ import annotations

from django import forms

from webportal.cases.models import Batch
from webportal.worklist.selectors import Queue


class WorklistFilterForm(forms.Form):
    queue = forms.ChoiceField(choices=Queue.choices, required=False, label="Status")
    priority = forms.ChoiceField(
        choices=[("", "Any priority"), *Batch.Priority.choices], required=False
    )
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )
    accession = forms.CharField(required=False, max_length=100, label="Accession")
    patient = forms.CharField(required=False, max_length=100, label="Patient id")
    search = forms.CharField(
        required=False,
        max_length=100,
        label="Search",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "accession, patient, note"}),
    )
