from __future__ import annotations

from django import forms


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
