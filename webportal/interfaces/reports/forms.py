from __future__ import annotations

from django import forms

from webportal.reports.differential import CATEGORY_GROUPS


class RemarksForm(forms.Form):
    comment = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False)
    morphology = forms.CharField(
        label="Morphology remarks", widget=forms.Textarea(attrs={"rows": 3}), required=False
    )
    wbc_count = forms.DecimalField(
        label="WBC count (x10⁹/L)",
        required=False,
        max_digits=6,
        decimal_places=2,
        min_value=0.01,
        help_text="From the analyser; gives absolute counts per class.",
    )


class AmendForm(RemarksForm):
    reason = forms.CharField(
        label="Reason for the amendment", widget=forms.Textarea(attrs={"rows": 2}), max_length=2000
    )

    field_order = ["reason", "comment", "morphology", "wbc_count"]


class PolicyForm(forms.Form):
    min_leukocytes = forms.IntegerField(
        label="Minimum of leukocytes to sign",
        min_value=1,
        max_value=10_000,
        help_text="CLSI H20-A2: 100 (200 halves the imprecision). Below it, signing needs a "
        "stated reason, printed on the report.",
    )
    every_cell_verified = forms.BooleanField(
        label="Every cell verified by a person before signing",
        required=False,
        help_text="The ICSH recommendation for digital morphology: no cell is reported on the "
        "model's word alone.",
    )


class CategoryForm(forms.Form):
    label = forms.CharField(label="Category", max_length=100)
    group = forms.ChoiceField(choices=list(CATEGORY_GROUPS.items()))
    loinc = forms.CharField(
        label="LOINC code (/100 leukocytes)", max_length=10, required=False,
        help_text="A member of panel 24318-8, e.g. 35058-7 (hairy cells).",
    )  # fmt: skip
    critical = forms.BooleanField(label="Critical result", required=False)
