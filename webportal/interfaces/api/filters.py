from __future__ import annotations

import django_filters
from django import forms
from drf_spectacular.utils import extend_schema_field

from webportal.cases.models import Batch, Case, Patient

# Ids are 64-bit signed (BigAutoField): a number beyond is a bad request (400), not a 500.
MAX_ID = 2**63 - 1


@extend_schema_field({"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID})
class IdFilter(django_filters.NumberFilter):
    """A whole number from 1 to MAX_ID (NumberFilter alone takes decimals of any size)."""

    field_class = forms.IntegerField

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", MAX_ID)
        super().__init__(*args, **kwargs)


class StrictFilterSet(django_filters.FilterSet):
    """An empty value (`?created_before=`) is a 400, not "no filter", for every filter but text.

    django-filter reads an empty parameter as absent (HTML forms); an API client that sends one
    made a mistake, and an empty date, id or status is not what the schema documents. An empty
    text filter (`?accession=`) is a valid string and still means "any".
    """

    def is_valid(self) -> bool:
        valid = bool(super().is_valid())
        for name, filter_ in self.filters.items():
            if isinstance(filter_, django_filters.CharFilter) or name not in self.data:
                continue
            if any(value == "" for value in self.data.getlist(name)):
                self.form.add_error(name, "Give a value, or leave the parameter out.")
                valid = False
        return valid


class CaseFilter(StrictFilterSet):
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


class BatchFilter(StrictFilterSet):
    status = django_filters.ChoiceFilter(choices=Batch.Status.choices)
    priority = django_filters.ChoiceFilter(choices=Batch.Priority.choices)
    case = IdFilter(field_name="case_id")
    accession = django_filters.CharFilter(field_name="case__accession_number")
    created_after = django_filters.DateFilter(field_name="created_at", lookup_expr="date__gte")
    created_before = django_filters.DateFilter(field_name="created_at", lookup_expr="date__lte")

    class Meta:
        model = Batch
        fields = ["status", "priority", "case", "accession", "created_after", "created_before"]


class PatientFilter(StrictFilterSet):
    external_id = django_filters.CharFilter(help_text="Patient id / MRN, exact.")

    class Meta:
        model = Patient
        fields = ["external_id"]
