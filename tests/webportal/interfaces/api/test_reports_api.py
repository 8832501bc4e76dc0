from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.urls import reverse
from fhir.resources.R4B.bundle import Bundle
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from webportal.cases import services
from webportal.cases.models import ModelVersion
from webportal.pipeline import batch_job
from webportal.reports import fhir
from webportal.reports import services as report_services
from webportal.reports.models import Report

pytestmark = pytest.mark.django_db


@pytest.fixture
def done_batch(member, tiny_model: ModelVersion):
    case = services.create_case(
        lab=member.lab, created_by=None, accession_number="R-1", patient_external_id="MRN-9"
    )
    batch = services.submit_batch(
        case=case,
        created_by=None,
        files=[(f"{i}.jpg", io.BytesIO(noisy_jpeg_bytes())) for i in range(4)],
    )
    batch_job.process_batch(batch_id=batch.pk)
    return batch


def test_the_latest_report_is_json_by_default_and_fhir_when_asked(
    api: APIClient, done_batch
) -> None:
    url = reverse("api:batch_report", args=[done_batch.pk])
    as_json = api.get(url)
    assert as_json.status_code == 200
    assert as_json["Content-Type"] == "application/json"
    body = as_json.json()
    assert (body["version"], body["status"], body["total_cells"]) == (1, "preliminary", 4)
    assert body["accession_number"] == "R-1"
    as_fhir = api.get(url, HTTP_ACCEPT="application/fhir+json")
    assert as_fhir["Content-Type"] == "application/fhir+json"
    assert as_fhir.json()["resourceType"] == "Bundle"
    explicit = api.get(reverse("api:batch_report_fhir", args=[done_batch.pk]))
    assert explicit["Content-Type"] == "application/fhir+json"
    assert explicit.json() == as_fhir.json()
    assert api.get(url, HTTP_ACCEPT="text/csv").status_code == 406


def test_the_fhir_bundle_validates_and_carries_loinc_codes_and_the_patient(
    api: APIClient, done_batch
) -> None:
    bundle = api.get(reverse("api:batch_report_fhir", args=[done_batch.pk])).json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "collection"
    (diagnostic,) = fhir.resources_of(bundle, "DiagnosticReport")
    assert diagnostic["status"] == "preliminary"
    assert diagnostic["meta"]["versionId"] == "1"
    (patient,) = fhir.resources_of(bundle, "Patient")
    assert patient["identifier"][0]["value"] == "MRN-9"
    urls = {entry["resource"]["resourceType"]: entry["fullUrl"] for entry in bundle["entry"]}
    assert diagnostic["subject"]["reference"] == urls["Patient"]
    assert diagnostic["performer"][0]["display"] == done_batch.case.lab.name
    observations = fhir.resources_of(bundle, "Observation")
    by_url = {entry["fullUrl"]: entry["resource"] for entry in bundle["entry"]}
    assert [by_url[ref["reference"]] for ref in diagnostic["result"]] == observations
    codes = {
        coding["code"]
        for obs in observations
        for coding in obs["code"]["coding"]
        if coding["system"] == fhir.LOINC
    }
    # The tiny model knows lymphocytes, monocytes and neutrophils.
    assert {"26478-8", "26485-3", "26511-6"} <= codes
    percents = [obs["valueQuantity"]["value"] for obs in observations
                if obs["valueQuantity"]["code"] == "%"]  # fmt: skip
    classed = sum(row["count"] for row in done_batch.reports.get().differential
                  if row["label"] != "unidentified")  # fmt: skip
    assert sum(percents) == pytest.approx(100 if classed else 0, abs=0.5)


def test_absolute_counts_in_fhir_are_the_reports_own_digits(done_batch) -> None:
    report = done_batch.reports.get()
    report.wbc_count = Decimal("8.00")
    report.save()
    report = report_services.refresh_preliminary_report(batch=done_batch) or report
    bundle = fhir.report_bundle(report=report)
    absolute = {
        obs["code"]["coding"][0]["code"]: obs["valueQuantity"]
        for obs in fhir.resources_of(bundle, "Observation")
        if obs["valueQuantity"]["code"] == "10*9/L"
    }
    rows = {row["label"]: row for row in report.differential if row.get("absolute") is not None}
    assert absolute["26499-4"]["value"] == rows["neutrophil"]["absolute"]
    assert sum(quantity["value"] for quantity in absolute.values()) == pytest.approx(8.0, abs=0.1)


def test_a_signed_report_is_final_with_its_interpreter_in_fhir(done_batch, member) -> None:
    report = done_batch.reports.get()
    report.status, report.signed_by = Report.Status.FINAL, member.user
    report.signed_at = report.created_at
    report.save()
    bundle = fhir.report_bundle(report=report)
    (diagnostic,) = fhir.resources_of(bundle, "DiagnosticReport")
    assert diagnostic["status"] == "final"
    assert {obs["status"] for obs in fhir.resources_of(bundle, "Observation")} == {"final"}
    interpreter = diagnostic["resultsInterpreter"][0]
    assert interpreter["identifier"]["value"] == member.user.username
    assert "to be reviewed" not in diagnostic["conclusion"]


def test_reports_answer_304_to_a_client_that_has_the_current_version(
    api: APIClient, done_batch
) -> None:
    url = reverse("api:batch_report", args=[done_batch.pk])
    first = api.get(url)
    assert first["ETag"]
    assert first["Last-Modified"]
    again = api.get(url, HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304
    fhir_tag = api.get(url, HTTP_ACCEPT="application/fhir+json")["ETag"]
    assert fhir_tag != first["ETag"]
    report = done_batch.reports.get()
    report.comment = "changed"
    report.save()
    assert api.get(url, HTTP_IF_NONE_MATCH=first["ETag"]).status_code == 200


def test_every_version_has_its_own_url(api: APIClient, done_batch) -> None:
    versions = api.get(reverse("api:batch_reports", args=[done_batch.pk])).json()["results"]
    assert [version["version"] for version in versions] == [1]
    one = api.get(versions[0]["url"])
    assert one.json()["id"] == versions[0]["id"]
    assert api.get(versions[0]["fhir_url"])["Content-Type"] == "application/fhir+json"
    missing = api.get(reverse("api:batch_report_version", args=[done_batch.pk, 9]))
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"


def test_a_batch_without_a_report_answers_404_in_json_even_for_fhir(
    api: APIClient, case, tiny_model: ModelVersion
) -> None:
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    response = api.get(reverse("api:batch_report_fhir", args=[batch.pk]))
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "not_found"
