from __future__ import annotations

import django_filters
from django import forms

from webportal.cases.models import Batch, Case, Patient

# Ids are 64-bit signed (BigAutoField): a number beyond is a bad request (400), not a 500.
MAX_ID = 2**63 - 1


class IdFilter(django_filters.NumberFilter):
    """A whole number from 1 to MAX_ID (NumberFilter alone takes decimals of any size)."""

    field_class = forms.IntegerField

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class CaseFilter(django_filters.FilterSet):
    accession = django_filters.CharFilter(field_name="accession_number", help_text="Exact.")
    patient = django_filters.CharFilter(
        field_name="patient__external_id", help_text="Patient id / MRN, exact."
    )
    status = django_filters.ChoiceFilter(
        field_name="latest_batch_status",
        choices=[("new", "New"), *Batch.Status.choices],
        help_text="The status of the case's latest batch; `new`: no batch yet.",
    )
    created_after = django_filters.DateFilter(field_name="created_at", lookup_expr="date__gte")
    created_before = django_filters.DateFilter(field_name="created_at", lookup_expr="date__lte")

    class Meta:
        model = Case
        fields = ["accession", "patient", "status", "created_after", "created_before"]


class BatchFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=Batch.Status.choices)
    priority = django_filters.ChoiceFilter(choices=Batch.Priority.choices)
    case = IdFilter(field_name="case_id")
    accession = django_filters.CharFilter(field_name="case__accession_number")
    created_after = django_filters.DateFilter(field_name="created_at", lookup_expr="date__gte")
    created_before = django_filters.DateFilter(field_name="created_at", lookup_expr="date__lte")

    class Meta:
        model = Batch
        fields = ["status", "priority", "case", "accession", "created_after", "created_before"]


class PatientFilter(django_filters.FilterSet):
    external_id = django_filters.CharFilter(help_text="Patient id / MRN, exact.")

    class Meta:
        model = Patient
        fields = ["external_id"]
