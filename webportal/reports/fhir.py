"""A report in FHIR R4: a Bundle a lab information system or an EHR can file.

The Bundle is of type `collection` (FHIR R4 Bundle.type): a set of resources sent together, with
no Composition and no server-side processing asked of the receiver, which is how a result feed
is usually shaped. It holds, in this order:

- the DiagnosticReport: category LAB (terminology.hl7.org v2-0074, which US Core requires) and
  HM, code LOINC 24318-8 (Manual Differential panel - Blood), status preliminary / final /
  amended, `effectiveDateTime` the specimen's collection (the upload when unknown), `issued`,
  the result Observations, the Patient, the Specimen, the interpreter who signed, a conclusion
  true to the status (with the comment, morphology remarks and any amendment reason), and the
  PDF as `presentedForm`;
- the Patient (identifier, name, birth date, sex), the Specimen (type, collected, received) and
  the lab as Organization;
- one standalone Observation per result (webportal.reports.results): LOINC code of the panel's
  members and the lab's local code, UCUM unit, reference range, interpretation H / L and AA for
  a critical result, the 95 % confidence interval of a percentage as a note.

An amendment keeps the DiagnosticReport's id (`batch-<id>`) and full URL, with `meta.versionId`
the report's version, so a receiver replaces what it filed instead of filing a second report;
each version stays at its own API URL (`.../reports/<version>/fhir/`). Validated with
fhir.resources (its R4B package; Bundle, DiagnosticReport, Observation, Patient and Specimen are
the same as in R4).
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from webportal.reports.models import Report
from webportal.reports.results import (  # LOINC and UCUM: re-exported for this module's callers
    LOINC as LOINC,
)
from webportal.reports.results import (
    PANEL,
    Kind,
    Result,
    ResultDocument,
    result_document,
)
from webportal.reports.results import (
    UCUM as UCUM,
)

CONTENT_TYPE = "application/fhir+json"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
INTERPRETATIONS = {
    "H": ("H", "High"),
    "L": ("L", "Low"),
    "AA": ("AA", "Critical abnormal"),
}
GENDER = {"male": "male", "female": "female", "other": "other", "unknown": "unknown"}


def local_code_system(lab_slug: str) -> str:
    return f"urn:hematovision:{lab_slug}:cell-class"


def patient_identifier_system(lab_slug: str) -> str:
    return f"urn:hematovision:{lab_slug}:patient"


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _full_url(lab_slug: str, resource_type: str, resource_id: str) -> str:
    """A stable `urn:uuid:` for a resource: the same lab, type and id give the same URL, so an
    amended report keeps the full URL of the version it replaces."""
    name = f"hematovision:{lab_slug}:{resource_type}/{resource_id}"
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def _quantity(value: float, result: Result) -> dict[str, Any]:
    return {"value": value, "unit": result.unit_text, "system": UCUM, "code": result.unit}


def _observation(doc: ResultDocument, result: Result, refs: dict[str, str]) -> dict[str, Any]:
    status = {"preliminary": "preliminary", "final": "final", "amended": "amended"}[doc.status]
    codings = [_coding(LOINC, *result.loinc)] if result.loinc else []
    codings.append(_coding(local_code_system(doc.lab_slug), result.id, result.text))
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"batch-{doc.batch_id}-{result.id}",
        "meta": {"versionId": str(doc.version)},
        "status": status,
        "category": [{"coding": [_coding(OBSERVATION_CATEGORY, "laboratory", "Laboratory")]}],
        "code": {"coding": codings, "text": result.text},
        "subject": {"reference": refs["patient"]},
        "specimen": {"reference": refs["specimen"]},
        "performer": [{"reference": refs["organization"]}],
        "effectiveDateTime": doc.effective.isoformat(),
        "issued": doc.issued.isoformat(),
        "valueQuantity": _quantity(result.value, result),
    }
    if result.low is not None or result.high is not None:
        bounds: dict[str, Any] = {}
        if result.low is not None:
            bounds["low"] = _quantity(result.low, result)
        if result.high is not None:
            bounds["high"] = _quantity(result.high, result)
        observation["referenceRange"] = [bounds]
    flags = [result.flag] if result.flag in {"H", "L"} else []
    if result.critical:
        flags.append("AA")
    if flags:
        observation["interpretation"] = [
            {"coding": [_coding(INTERPRETATION, *INTERPRETATIONS[flag])]} for flag in flags
        ]
    if result.ci_low is not None and result.ci_high is not None:
        observation["note"] = [
            {
                "text": f"95% confidence interval {result.ci_low:g}-{result.ci_high:g} "
                f"{result.unit_text} ({result.count} of {doc.wbc_cells} leukocytes)"
            }
        ]
    elif result.kind == Kind.PERCENT and result.count is not None:
        observation["note"] = [{"text": f"{result.count} of {doc.wbc_cells} leukocytes"}]
    return observation


def _patient(doc: ResultDocument) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": f"batch-{doc.batch_id}-patient"}
    patient = doc.patient
    if patient is None:
        # No patient was given: the accession number is the only identifier the lab has, and the
        # name says so, so a receiver never files the result against a guessed person.
        resource["identifier"] = [
            {
                "type": {"coding": [_coding(V2_0203, "ACSN", "Accession ID")]},
                "system": f"urn:hematovision:{doc.lab_slug}:accession",
                "value": doc.accession_number,
            }
        ]
        resource["name"] = [{"text": "Unidentified patient"}]
        return resource
    resource["id"] = f"patient-{uuid.uuid5(uuid.NAMESPACE_URL, patient.identifier).hex[:16]}"
    resource["identifier"] = [
        {
            "type": {"coding": [_coding(V2_0203, "MR", "Medical record number")]},
            "system": patient_identifier_system(doc.lab_slug),
            "value": patient.identifier,
        }
    ]
    if patient.family_name or patient.given_name:
        name: dict[str, Any] = {"use": "official"}
        if patient.family_name:
            name["family"] = patient.family_name
        if patient.given_name:
            name["given"] = [patient.given_name]
        resource["name"] = [name]
    if patient.birth_date is not None:
        resource["birthDate"] = patient.birth_date.isoformat()
    if patient.sex in GENDER:
        resource["gender"] = GENDER[patient.sex]
    return resource


def _specimen(doc: ResultDocument, refs: dict[str, str]) -> dict[str, Any]:
    specimen = doc.specimen
    resource: dict[str, Any] = {
        "resourceType": "Specimen",
        "id": f"batch-{doc.batch_id}-specimen",
        "identifier": [
            {"system": f"urn:hematovision:{doc.lab_slug}:specimen", "value": specimen.identifier}
        ],
        "accessionIdentifier": {
            "system": f"urn:hematovision:{doc.lab_slug}:accession",
            "value": doc.accession_number,
        },
        "type": {"text": specimen.type or "Peripheral blood smear"},
        "subject": {"reference": refs["patient"]},
    }
    if specimen.received_at is not None:
        resource["receivedTime"] = specimen.received_at.isoformat()
    if specimen.collected_at is not None:
        resource["collection"] = {"collectedDateTime": specimen.collected_at.isoformat()}
    return resource


def _conclusion(doc: ResultDocument) -> str:
    parts = [doc.conclusion]  # a critical report's begins with its critical findings
    if doc.comment:
        parts.append(f"Comment: {doc.comment}")
    if doc.morphology:
        parts.append(f"Morphology: {doc.morphology}")
    if doc.status == "amended" and doc.replaces_version is not None:
        when = doc.replaces_issued.isoformat() if doc.replaces_issued else "unknown"
        parts.append(f"Replaces version {doc.replaces_version} issued {when}.")
    return " ".join(parts)


def report_bundle(*, report: Report, pdf: bytes | None = None) -> dict[str, Any]:
    """The report as a FHIR R4 Bundle (a JSON-ready dict), validated."""
    doc = result_document(report=report)
    patient = _patient(doc)
    specimen_id = f"batch-{doc.batch_id}-specimen"
    refs = {
        "patient": _full_url(doc.lab_slug, "Patient", patient["id"]),
        "specimen": _full_url(doc.lab_slug, "Specimen", specimen_id),
        "organization": _full_url(doc.lab_slug, "Organization", "lab"),
        "report": _full_url(doc.lab_slug, "DiagnosticReport", f"batch-{doc.batch_id}"),
    }
    observations = [_observation(doc, result, refs) for result in doc.results]
    observation_urls = [
        _full_url(doc.lab_slug, "Observation", observation["id"]) for observation in observations
    ]
    status = {"preliminary": "preliminary", "final": "final", "amended": "amended"}[doc.status]
    diagnostic: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": f"batch-{doc.batch_id}",
        "meta": {"versionId": str(doc.version), "lastUpdated": report.updated_at.isoformat()},
        "identifier": [
            {"system": f"urn:hematovision:{doc.lab_slug}:report", "value": f"batch-{doc.batch_id}"},
            {
                "type": {"coding": [_coding(V2_0203, "ACSN", "Accession ID")]},
                "system": f"urn:hematovision:{doc.lab_slug}:accession",
                "value": doc.accession_number,
            },
        ],
        "status": status,
        "category": [
            {"coding": [_coding(V2_0074, "LAB", "Laboratory")]},
            {"coding": [_coding(V2_0074, "HM", "Hematology")]},
        ],
        "code": {"coding": [_coding(LOINC, *PANEL)], "text": "Manual differential"},
        "subject": {"reference": refs["patient"]},
        "effectiveDateTime": doc.effective.isoformat(),
        "issued": doc.issued.isoformat(),
        "performer": [{"reference": refs["organization"], "display": doc.lab_name}],
        "specimen": [{"reference": refs["specimen"]}],
        "result": [{"reference": url} for url in observation_urls],
        "conclusion": _conclusion(doc),
    }
    if doc.critical:
        diagnostic["conclusionCode"] = [
            {"coding": [_coding(INTERPRETATION, *INTERPRETATIONS["AA"])], "text": "Critical"}
        ]
    if doc.signer is not None:
        diagnostic["resultsInterpreter"] = [
            {
                "identifier": {
                    "system": f"urn:hematovision:{doc.lab_slug}:user",
                    "value": doc.signer.username,
                },
                "display": doc.signer.name,
            }
        ]
    if pdf is not None:
        diagnostic["presentedForm"] = [
            {
                "contentType": "application/pdf",
                "language": "en",
                "data": base64.b64encode(pdf).decode("ascii"),
                "title": f"Report {doc.accession_number} version {doc.version}",
                "creation": doc.issued.isoformat(),
            }
        ]
    organization = {
        "resourceType": "Organization",
        "id": f"lab-{doc.lab_slug.replace('_', '-')}"[:64],
        "identifier": [{"system": "urn:hematovision:lab", "value": doc.lab_slug}],
        "name": doc.lab_name,
    }
    entries = [
        (refs["report"], diagnostic),
        (refs["patient"], patient),
        (refs["specimen"], _specimen(doc, refs)),
        (refs["organization"], organization),
        *zip(observation_urls, observations, strict=True),
    ]
    bundle = {
        "resourceType": "Bundle",
        "id": f"batch-{doc.batch_id}-v{doc.version}",
        "meta": {"versionId": str(doc.version)},
        "identifier": {
            "system": f"urn:hematovision:{doc.lab_slug}:report-bundle",
            "value": f"batch-{doc.batch_id}-v{doc.version}",
        },
        "type": "collection",
        "timestamp": doc.issued.isoformat(),
        "entry": [{"fullUrl": url, "resource": resource} for url, resource in entries],
    }
    validated = Bundle.model_validate(bundle)
    return dict(json.loads(validated.model_dump_json(exclude_none=True)))


def resources_of(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        entry["resource"]
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == resource_type
    ]
