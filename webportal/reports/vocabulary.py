"""The lab's cell vocabulary: what a reviewer may call a cell. Pure, no database.

The model's classes come first (from the checkpoint), then the morphology categories a
differential exists to find and the model does not know (DEFAULT_CATEGORIES), then the
categories a lab admin added (reports.services.add_category). A lab may also mark any of them
critical (blast is critical by default). A category the model lacks is never taught to it:
adaptation exports only the model's classes (webportal.adaptation.selectors).

LOINC codes are those of the members of LOINC panel 24318-8, "Manual Differential panel -
Blood" (https://loinc.org/24318-8, the "/100 leukocytes in Blood" terms), kept beside the
absolute-count terms the FHIR output uses (webportal.reports.fhir).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from webportal.core.labels import NOT_CLASSED
from webportal.reports.differential import Category, Group, group_of

# Class name -> (LOINC code, display) of the "/100 leukocytes" result (panel 24318-8).
PERCENT_LOINC: dict[str, tuple[str, str]] = {
    "neutrophil": ("26511-6", "Neutrophils/100 leukocytes in Blood"),
    "lymphocyte": ("26478-8", "Lymphocytes/100 leukocytes in Blood"),
    "monocyte": ("26485-3", "Monocytes/100 leukocytes in Blood"),
    "eosinophil": ("26450-7", "Eosinophils/100 leukocytes in Blood"),
    "basophil": ("30180-4", "Basophils/100 leukocytes in Blood"),
    "blast": ("26446-5", "Blasts/100 leukocytes in Blood"),
    "promyelocyte": ("26524-9", "Promyelocytes/100 leukocytes in Blood"),
    "myelocyte": ("26498-6", "Myelocytes/100 leukocytes in Blood"),
    "metamyelocyte": ("28541-1", "Metamyelocytes/100 leukocytes in Blood"),
    "band neutrophil": ("26508-2", "Band form neutrophils/100 leukocytes in Blood"),
    "variant lymphocyte": ("13046-8", "Variant lymphocytes/100 leukocytes in Blood"),
    "plasma cell": ("13047-6", "Plasma cells/100 leukocytes in Blood"),
    "smudge cell": ("34992-8", "Smudge cells/100 leukocytes in Blood"),
    # Not members of panel 24318-8 but the methodless "/100 leukocytes" terms for two classes
    # the shipped models know (LOINC keeps 71695-1 and 58413-6 for analysers' counts).
    "ig": ("38518-7", "Immature granulocytes/100 leukocytes in Blood"),
    "erythroblast": ("19048-8", "Nucleated erythrocytes/100 leukocytes in Blood"),
}

# The default morphology categories beside the model's classes (CLSI H20-A2's reference
# differential and the ICSH recommendations for the nomenclature of peripheral blood cells,
# Palmer et al. 2015, doi:10.1111/ijlh.12327). Smudge cells are counted per 100
# leukocytes, outside the denominator; artefacts are counted nowhere.
DEFAULT_CATEGORIES: tuple[Category, ...] = (
    Category("blast", Group.WBC, critical=True),
    Category("promyelocyte", Group.WBC),
    Category("myelocyte", Group.WBC),
    Category("metamyelocyte", Group.WBC),
    Category("band neutrophil", Group.WBC),
    Category("variant lymphocyte", Group.WBC),
    Category("plasma cell", Group.WBC),
    Category("smudge cell", Group.PER_100_WBC),
    Category("artefact", Group.NOT_CLASSED),
)


def class_key(label: str) -> str:
    """`Neutrophils`, `neutrophil` and `NEUTROPHIL` are one class."""
    key = " ".join(label.strip().lower().replace("_", " ").split())
    return key[:-1] if key.endswith("s") and not key.endswith("ss") else key


def loinc_of(label: str) -> tuple[str, str]:
    return PERCENT_LOINC.get(class_key(label), ("", ""))


def with_loinc(category: Category) -> Category:
    if category.loinc:
        return category
    code, display = loinc_of(category.label)
    return replace(category, loinc=code, loinc_display=display)


def build_vocabulary(
    *,
    classes: Sequence[str],
    lab_categories: Iterable[Category] = (),
) -> list[Category]:
    """The model's classes, the defaults the model lacks, then the lab's own categories.

    A lab category named like an earlier one (case-insensitively) does not add a label: it
    sets that one's critical mark (and, for a category the model lacks, its group and LOINC).
    """
    vocabulary: dict[str, Category] = {}
    for label in classes:
        vocabulary[class_key(label)] = Category(label, group_of(label), in_model=True)
    for category in DEFAULT_CATEGORIES:
        vocabulary.setdefault(class_key(category.label), category)
    for own in lab_categories:
        key = class_key(own.label)
        known = vocabulary.get(key)
        if known is None:
            vocabulary[key] = replace(own, in_model=False)
        elif known.in_model:
            vocabulary[key] = replace(known, critical=own.critical)
        else:
            vocabulary[key] = replace(own, label=known.label, in_model=False)
    return [with_loinc(category) for category in vocabulary.values()]


def review_choices(vocabulary: Sequence[Category]) -> list[str]:
    """What a reviewer may choose: every category, then "not classed"."""
    return [*(category.label for category in vocabulary), NOT_CLASSED]


def find_label(label: str, vocabulary: Sequence[Category]) -> str | None:
    """The vocabulary's spelling of `label` (case, plural and spaces aside), or None."""
    wanted = class_key(label)
    if wanted == class_key(NOT_CLASSED):
        return NOT_CLASSED
    for category in vocabulary:
        if class_key(category.label) == wanted or category.label.lower() == label.strip().lower():
            return category.label
    return None
