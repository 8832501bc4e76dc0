"""A report in FHIR R4: a DiagnosticReport with one contained Observation per class.

Built and validated with fhir.resources (its R4B package: DiagnosticReport and Observation are
the same as in R4). Percentages are of leukocytes, so cells that are not leukocytes (platelets,
erythroblasts) and cells the model left unidentified are counted, not put in the denominator.
"""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from webportal.cases.batch_check import FLAG_CODE
from webportal.reports.content import header_of
from webportal.reports.models import Report

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
CONTENT_TYPE = "application/fhir+json"

# Class -> (LOINC code, display) for % of leukocytes and for the absolute count.
PERCENT_LOINC = {
    "neutrophil": ("26511-6", "Neutrophils/100 leukocytes in Blood"),
    "lymphocyte": ("26478-8", "Lymphocytes/100 leukocytes in Blood"),
    "monocyte": ("26485-3", "Monocytes/100 leukocytes in Blood"),
    "eosinophil": ("26450-7", "Eosinophils/100 leukocytes in Blood"),
    "basophil": ("30180-4", "Basophils/100 leukocytes in Blood"),
}
ABSOLUTE_LOINC = {
    "neutrophil": ("26499-4", "Neutrophils [#/volume] in Blood"),
    "lymphocyte": ("26474-7", "Lymphocytes [#/volume] in Blood"),
    "monocyte": ("26484-6", "Monocytes [#/volume] in Blood"),
    "eosinophil": ("26449-9", "Eosinophils [#/volume] in Blood"),
    "basophil": ("26444-0", "Basophils [#/volume] in Blood"),
}
DIFFERENTIAL_PANEL = ("69738-3", "Differential panel, method unspecified - Blood")
NOT_LEUKOCYTES = {"platelet", "erythroblast", "unidentified", "not-classed"}


def _class_key(label: str) -> str:
    """`Neutrophils` and `neutrophil` are one class."""
    key = label.strip().lower().replace(" ", "_")
    if key == "not_classed":
        return "not-classed"  # FHIR ids allow letters, digits, "-" and "."
    return key[:-1] if key.endswith("s") and not key.endswith("ss") else key


def local_code_system(lab_slug: str) -> str:
    return f"urn:hematovision:{lab_slug}:cell-class"


def patient_identifier_system(lab_slug: str) -> str:
    return f"urn:hematovision:{lab_slug}:patient"


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def diagnostic_report(*, report: Report, wbc_count: float | None = None) -> dict[str, Any]:
    """The report as a FHIR R4 DiagnosticReport (a JSON-ready dict), validated.

    `wbc_count` is the white-cell count in 10^9/L; when known, each leukocyte class also gets
    its absolute count.
    """
    if wbc_count is None and report.wbc_count is not None:
        wbc_count = float(report.wbc_count)
    batch = report.batch
    case = batch.case
    lab = case.lab
    status = {
        Report.Status.PRELIMINARY: "preliminary",
        Report.Status.FINAL: "final",
        Report.Status.AMENDED: "amended",
    }[Report.Status(report.status)]
    rows = list(report.differential)
    leukocytes = sum(row["count"] for row in rows if _class_key(row["label"]) not in NOT_LEUKOCYTES)
    observations: list[dict[str, Any]] = []
    for row in rows:
        key = _class_key(row["label"])
        local = _coding(local_code_system(lab.slug), key, row["label"])
        subject = _subject(report)
        base: dict[str, Any] = {
            "resourceType": "Observation",
            "status": status,
            "category": [
                {
                    "coding": [
                        _coding(
                            "http://terminology.hl7.org/CodeSystem/observation-category",
                            "laboratory",
                            "Laboratory",
                        )
                    ]
                }
            ],
            **({"subject": subject} if subject else {}),
            "effectiveDateTime": batch.created_at.isoformat(),
        }
        if key in NOT_LEUKOCYTES:
            observations.append(
                {
                    **base,
                    "id": f"count-{key}",
                    "code": {"coding": [local], "text": f"{row['label']} (cells seen)"},
                    "valueQuantity": {
                        "value": row["count"], "unit": "cells", "system": UCUM, "code": "{cells}"
                    },
                }
            )  # fmt: skip
            continue
        # The report's own % of leukocytes (largest-remainder rounded) where it has one.
        percent = (
            row["percent"]
            if row.get("group") == "wbc"
            else (round(100 * row["count"] / leukocytes, 1) if leukocytes else 0.0)
        )
        codings = [_coding(LOINC, *PERCENT_LOINC[key])] if key in PERCENT_LOINC else []
        observations.append(
            {
                **base,
                "id": f"percent-{key}",
                "code": {"coding": [*codings, local], "text": f"{row['label']} / 100 leukocytes"},
                "valueQuantity": {"value": percent, "unit": "%", "system": UCUM, "code": "%"},
            }
        )
        if wbc_count is not None:
            absolute = [_coding(LOINC, *ABSOLUTE_LOINC[key])] if key in ABSOLUTE_LOINC else []
            observations.append(
                {
                    **base,
                    "id": f"absolute-{key}",
                    "code": {"coding": [*absolute, local], "text": f"{row['label']} count"},
                    "valueQuantity": {
                        "value": round(wbc_count * percent / 100, 2),
                        "unit": "10^9/L",
                        "system": UCUM,
                        "code": "10*9/L",
                    },
                }
            )
    unidentified = sum(row["count"] for row in rows if _class_key(row["label"]) == "unidentified")
    conclusion = (
        f"Automated differential of {report.total_cells} cells (model "
        f"{report.model_version.name}); decision support, to be reviewed by a person."
    )
    unlike = next((f["message"] for f in report.flags if f["code"] == FLAG_CODE), None)
    if unlike:
        conclusion += f" {unlike}"
    if unidentified:
        why = "not auto-accepted" if unlike else "below the confidence threshold"
        conclusion += f" {unidentified} cell(s) {why} are not classed."
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"report-{report.pk}",
        "identifier": [
            {
                "system": f"urn:hematovision:{lab.slug}:report",
                "value": f"batch-{batch.pk}-v{report.version}",
            },
            {
                "type": {"coding": [_coding(V2_0203, "ACSN", "Accession ID")]},
                "system": f"urn:hematovision:{lab.slug}:accession",
                "value": case.accession_number,
            },
        ],
        "status": status,
        "category": [{"coding": [_coding(V2_0074, "HM", "Hematology")]}],
        "code": {"coding": [_coding(LOINC, *DIFFERENTIAL_PANEL)], "text": "Differential"},
        "effectiveDateTime": batch.created_at.isoformat(),
        "issued": (report.signed_at or report.created_at).isoformat(),
        "performer": [
            {
                "type": "Organization",
                "identifier": {"system": "urn:hematovision:lab", "value": lab.slug},
                "display": lab.name,
            }
        ],
        "contained": observations,
        "result": [{"reference": f"#{observation['id']}"} for observation in observations],
        "conclusion": conclusion,
    }
    if subject := _subject(report):
        resource["subject"] = subject
    if report.signed_by is not None:
        signer = report.signed_by
        resource["resultsInterpreter"] = [
            {
                "type": "Practitioner",
                "identifier": {
                    "system": f"urn:hematovision:{lab.slug}:user",
                    "value": signer.get_username(),
                },
                "display": signer.get_full_name() or signer.get_username(),
            }
        ]
    validated = DiagnosticReport.model_validate(resource)
    return dict(json.loads(validated.model_dump_json(exclude_none=True)))


def _subject(report: Report) -> dict[str, Any] | None:
    patient = report.batch.case.patient
    if patient is None:
        return None
    # The second identifier as the report printed it (issue 19): name and birth date in the
    # reference's display; a contained Patient resource is issue 20's FHIR work.
    header = header_of(report)
    second = " · ".join(
        part
        for part in (
            header.patient_name,
            f"born {header.birth_date.isoformat()}" if header.birth_date else "",
            header.sex_display,
        )
        if part
    )
    return {
        "type": "Patient",
        "identifier": {
            "system": patient_identifier_system(report.batch.case.lab.slug),
            "value": patient.external_id,
        },
        **({"display": second} if second else {}),
    }
