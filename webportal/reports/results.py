"""A report as results a lab system files: one structure that FHIR and HL7 v2 are both built from.

The values are the report's own (`Report.differential`, rounded once when the report was
written), never computed again here, so the page, the PDF, the JSON, FHIR and HL7 carry the same
digits. Codes are LOINC terms of panel 24318-8 (Manual Differential panel - Blood); a class with
no LOINC term keeps only the lab's local code. Units are UCUM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from webportal.cases.batch_check import FLAG_CODE
from webportal.reports import wording
from webportal.reports.differential import group_of
from webportal.reports.models import Report
from webportal.reports.vocabulary import loinc_of

PANEL = ("24318-8", "Manual Differential panel - Blood")
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

# The "/100 leukocytes" terms (% of leukocytes, and per 100 leukocytes for the cells counted
# beside them) are the lab vocabulary's (webportal.reports.vocabulary.PERCENT_LOINC, members
# of panel 24318-8). The absolute counts' "[#/volume]" terms of the same panel:
ABSOLUTE_LOINC: dict[str, tuple[str, str]] = {
    "neutrophil": ("26499-4", "Neutrophils [#/volume] in Blood"),
    "lymphocyte": ("26474-7", "Lymphocytes [#/volume] in Blood"),
    "monocyte": ("26484-6", "Monocytes [#/volume] in Blood"),
    "eosinophil": ("26449-9", "Eosinophils [#/volume] in Blood"),
    "basophil": ("26444-0", "Basophils [#/volume] in Blood"),
    "blast": ("30376-8", "Blasts [#/volume] in Blood"),
    "promyelocyte": ("26523-1", "Promyelocytes [#/volume] in Blood"),
    "myelocyte": ("30446-9", "Myelocytes [#/volume] in Blood"),
    "metamyelocyte": ("30433-7", "Metamyelocytes [#/volume] in Blood"),
    "band-neutrophil": ("26507-4", "Band form neutrophils [#/volume] in Blood"),
    "variant-lymphocyte": ("26477-0", "Variant lymphocytes [#/volume] in Blood"),
    "plasma-cell": ("30458-4", "Plasma cells [#/volume] in Blood"),
    "ig": ("53115-2", "Immature granulocytes [#/volume] in Blood"),
}
WBC_LOINC = ("26464-8", "Leukocytes [#/volume] in Blood")


class Kind:
    PERCENT = "percent"  # % of leukocytes, UCUM "%"
    ABSOLUTE = "absolute"  # 10^9 cells per litre, UCUM "10*9/L"
    PER_100_WBC = "per_100_wbc"  # cells per 100 leukocytes, UCUM "/100{WBCs}"
    COUNT = "count"  # cells seen, outside the differential, UCUM "{cells}"


UNITS = {
    Kind.PERCENT: ("%", "%"),
    Kind.ABSOLUTE: ("10*9/L", "10^9/L"),
    Kind.PER_100_WBC: ("/100{WBCs}", "/100 WBC"),
    Kind.COUNT: ("{cells}", "cells"),
}


@dataclass(frozen=True)
class Result:
    """One result line: an FHIR Observation, an HL7 OBX."""

    id: str  # stable within a report, e.g. "percent-neutrophil"
    key: str  # the class key, e.g. "neutrophil"
    label: str  # the class as the report shows it
    kind: str  # Kind.*
    value: float
    loinc: tuple[str, str] | None  # (code, long common name), None when LOINC has no term
    low: float | None = None
    high: float | None = None
    flag: str = ""  # "H", "L" or ""
    critical: bool = False
    # The 95 % confidence interval of a % (when the report carries one).
    ci_low: float | None = None
    ci_high: float | None = None
    count: int | None = None

    @property
    def unit(self) -> str:
        return UNITS[self.kind][0]

    @property
    def unit_text(self) -> str:
        return UNITS[self.kind][1]

    @property
    def text(self) -> str:
        return {
            Kind.PERCENT: f"{self.label} / 100 leukocytes",
            Kind.ABSOLUTE: f"{self.label} count",
            Kind.PER_100_WBC: f"{self.label} / 100 leukocytes",
            Kind.COUNT: f"{self.label} (cells seen)",
        }[self.kind]


@dataclass(frozen=True)
class PatientInfo:
    identifier: str
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str = ""  # "male" | "female" | "other" | "unknown" | ""


@dataclass(frozen=True)
class SpecimenInfo:
    identifier: str
    type: str = ""
    collected_at: datetime | None = None
    received_at: datetime | None = None


@dataclass(frozen=True)
class Signer:
    username: str
    name: str


@dataclass(frozen=True)
class ResultDocument:
    report_id: int
    batch_id: int
    version: int
    status: str  # "preliminary" | "final" | "amended"
    lab_slug: str
    lab_name: str
    accession_number: str
    patient: PatientInfo | None
    specimen: SpecimenInfo
    requester: str
    effective: datetime  # when the specimen was collected (the upload when unknown)
    issued: datetime
    signer: Signer | None
    model_name: str
    total_cells: int
    wbc_cells: int
    wbc_count: float | None
    comment: str
    morphology: str
    amendment_reason: str
    replaces_version: int | None
    replaces_issued: datetime | None
    superseded: bool
    conclusion: str
    critical: bool
    results: list[Result] = field(default_factory=list)
    flags: list[dict[str, str]] = field(default_factory=list)

    @property
    def result_status(self) -> str:
        """HL7 table 0123: P preliminary, F final, C corrected (an amendment)."""
        return {"preliminary": "P", "final": "F", "amended": "C"}[self.status]


def class_key(label: str) -> str:
    """`Neutrophils`, `neutrophil` and `Neutrophil ` are one class; FHIR ids allow letters,
    digits, "-" and "."."""
    key = label.strip().lower().replace("_", " ")
    if key.endswith("s") and not key.endswith("ss"):
        key = key[:-1]
    return key.replace(" ", "-")


def _patient(report: Report) -> PatientInfo | None:
    patient = report.batch.case.patient
    if patient is None:
        return None
    return PatientInfo(
        identifier=patient.external_id,
        family_name=patient.family_name,
        given_name=patient.given_name,
        birth_date=patient.birth_date,
        sex=patient.sex,
    )


def _specimen(report: Report) -> SpecimenInfo:
    case = report.batch.case
    return SpecimenInfo(
        identifier=case.accession_number,  # the accession number is the specimen's id
        type=case.specimen_type,
        collected_at=case.specimen_collected_at,
        received_at=case.specimen_received_at,
    )


def _percent_loinc(row: dict[str, Any]) -> tuple[str, str] | None:
    """The row's "/100 leukocytes" LOINC term, from the vocabulary (the row keeps the code)."""
    code, display = loinc_of(str(row["label"]))
    if row.get("loinc") and row["loinc"] != code:
        code, display = str(row["loinc"]), str(row["label"])
    return (code, display) if code else None


def _results(report: Report) -> list[Result]:
    rows: list[dict[str, Any]] = list(report.differential)
    results: list[Result] = []
    for row in rows:
        key = class_key(str(row["label"]))
        group = row.get("group") or group_of(str(row["label"]))
        count = int(row["count"])
        critical = bool(row.get("critical"))
        if group == "wbc":
            results.append(
                Result(
                    id=f"percent-{key}",
                    key=key,
                    label=str(row["label"]),
                    kind=Kind.PERCENT,
                    value=float(row["percent"]),
                    loinc=_percent_loinc(row),
                    low=row.get("low"),
                    high=row.get("high"),
                    flag=str(row.get("flag") or ""),
                    critical=critical and count > 0,
                    ci_low=row.get("ci_low"),
                    ci_high=row.get("ci_high"),
                    count=count,
                )
            )
            if row.get("absolute") is not None:
                results.append(
                    Result(
                        id=f"absolute-{key}",
                        key=key,
                        label=str(row["label"]),
                        kind=Kind.ABSOLUTE,
                        value=float(row["absolute"]),
                        loinc=ABSOLUTE_LOINC.get(key),
                        low=row.get("absolute_low"),
                        high=row.get("absolute_high"),
                        flag=str(row.get("absolute_flag") or ""),
                        count=count,
                    )
                )
        elif group == "per_100_wbc":
            if row.get("percent") is None:
                continue  # no leukocyte counted: there is no "per 100 leukocytes"
            results.append(
                Result(
                    id=f"per-100-wbc-{key}",
                    key=key,
                    label=str(row["label"]),
                    kind=Kind.PER_100_WBC,
                    value=float(row["percent"]),
                    loinc=_percent_loinc(row),
                    count=count,
                )
            )
        elif count:  # cells seen outside the differential; none seen is not a result
            results.append(
                Result(
                    id=f"count-{key}",
                    key=key,
                    label=str(row["label"]),
                    kind=Kind.COUNT,
                    value=float(count),
                    loinc=None,
                    count=count,
                )
            )
    return results


def conclusion_of(report: Report, results: list[Result]) -> str:
    """One paragraph true to the report's status: the critical findings first; a preliminary
    report says it is not verified; who verified what (wording.verification_line); the batch
    guard's flag; cells left unclassed."""
    parts = wording.critical_messages(report)
    if report.status == Report.Status.PRELIMINARY:
        parts.append(
            f"PRELIMINARY, NOT VERIFIED: automated differential of {report.total_cells} cells, "
            "to be reviewed and signed by a qualified person."
        )
    else:
        signer = report.signed_by
        who = (signer.get_full_name() or signer.get_username()) if signer else "a pathologist"
        verb = "Amended" if report.status == Report.Status.AMENDED else "Signed"
        parts.append(f"{verb} by {who}: differential of {report.total_cells} cells.")
    parts.append(wording.verification_line(report))
    if below := wording.below_minimum_line(report):
        parts.append(below)
    unlike = next((f["message"] for f in report.flags if f["code"] == FLAG_CODE), None)
    if unlike:
        parts.append(unlike)
    unidentified = next((r.count for r in results if r.key == "unidentified"), 0) or 0
    if unidentified:
        why = "not auto-accepted" if unlike else "below the confidence threshold"
        parts.append(f"{unidentified} cell(s) {why} are not classed.")
    if report.status == Report.Status.AMENDED and report.amendment_reason:
        parts.append(f"Amendment: {report.amendment_reason}")
    return " ".join(parts)


def result_document(*, report: Report) -> ResultDocument:
    batch = report.batch
    case = batch.case
    lab = case.lab
    results = _results(report)
    specimen = _specimen(report)
    replaced = (
        Report.objects.filter(batch=batch, version=report.version - 1).first()
        if report.version > 1
        else None
    )
    signer = (
        Signer(
            username=report.signed_by.get_username(),
            name=report.signed_by.get_full_name() or report.signed_by.get_username(),
        )
        if report.signed_by is not None
        else None
    )
    return ResultDocument(
        report_id=report.pk,
        batch_id=batch.pk,
        version=report.version,
        status=str(report.status),
        lab_slug=lab.slug,
        lab_name=lab.name,
        accession_number=case.accession_number,
        patient=_patient(report),
        specimen=specimen,
        requester=case.requester,
        effective=specimen.collected_at or batch.created_at,
        issued=report.signed_at or report.created_at,
        signer=signer,
        model_name=report.model_version.name,
        total_cells=report.total_cells,
        wbc_cells=report.wbc_cells,
        wbc_count=None if report.wbc_count is None else float(report.wbc_count),
        comment=report.comment,
        morphology=report.morphology,
        amendment_reason=report.amendment_reason,
        replaces_version=replaced.version if replaced is not None else None,
        replaces_issued=(replaced.signed_at or replaced.created_at) if replaced else None,
        superseded=report.is_superseded,
        conclusion=conclusion_of(report, results),
        critical=report.critical,
        results=results,
        flags=list(report.flags),
    )
