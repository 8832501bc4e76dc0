"""The API driven as a laboratory information system would drive it: a case, an upload, the
review and the signature, the FHIR Bundle and the HL7 v2 message, an amendment, both again."""

from __future__ import annotations

import io
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

import pytest
from django.urls import reverse
from fhir.resources.R4B.bundle import Bundle
from hl7apy.parser import parse_message
from rest_framework.test import APIClient

from tests.conftest import TINY_CLASSES, noisy_jpeg_bytes
from tests.factories import MembershipFactory
from tests.mllp_listener import mllp_listener
from tests.webportal.conftest import bearer
from webportal.accounts.models import Role
from webportal.api import tokens
from webportal.api.models import LisDelivery
from webportal.cases.models import Batch, ModelVersion
from webportal.notifications import lis
from webportal.pipeline import batch_job
from webportal.reports import fhir, hl7v2

pytestmark = pytest.mark.django_db


@pytest.fixture
def pathologist_api(member) -> APIClient:
    pathologist = MembershipFactory.create(lab=member.lab, role=Role.PATHOLOGIST)
    issued = tokens.issue_personal_token(user=pathologist.user, lab=member.lab)
    return bearer(issued.plaintext)


def _hl7(api: APIClient, url: str) -> tuple[str, Any]:
    response = api.get(url)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith(hl7v2.CONTENT_TYPE)
    text = response.content.decode("utf-8")
    return text, parse_message(text, find_groups=True, validation_level=1)


def _obr25(message: Any) -> str:
    return str(message.oru_r01_patient_result.oru_r01_order_observation.obr.obr_25.to_er7())


def test_a_lis_files_the_signed_report_and_then_its_amendment(
    api: APIClient,
    pathologist_api: APIClient,
    tiny_model: ModelVersion,
    member,
    local_receivers_allowed,
    monkeypatch,
) -> None:
    monkeypatch.setattr(lis, "_send", lambda delivery_id: None)  # the poll sends, below
    with ExitStack() as stack:
        _round_trip(api, pathologist_api, member, stack)


def _round_trip(api: APIClient, pathologist_api: APIClient, member, stack: ExitStack) -> None:
    created = api.post(
        reverse("api:case_list"),
        {
            "accession_number": "LIS-1",
            "patient": {
                "identifier": "MRN-77",
                "family_name": "Doe",
                "given_name": "Jane",
                "birth_date": "1961-04-12",
                "sex": "female",
            },
            "specimen": {
                "type": "Venous blood, EDTA",
                "collected_at": "2026-12-06T08:10:00Z",
                "received_at": "2026-12-06T09:00:00Z",
            },
            "requester": "Dr Who, Ward 7",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    upload = api.post(
        reverse("api:case_batches", args=[created.json()["id"]]),
        {"files": [io.BytesIO(noisy_jpeg_bytes()) for _ in range(3)]},
        format="multipart",
    )
    assert upload.status_code == 201, upload.content
    batch_id = upload.json()["id"]
    batch_job.process_batch(batch_id=batch_id)
    cells = api.get(reverse("api:batch_cells", args=[batch_id])).json()["results"]
    reviewed = pathologist_api.post(
        reverse("api:batch_reviews", args=[batch_id]),
        {"cells": [cell["id"] for cell in cells], "label": TINY_CLASSES[0]},
        format="json",
    )
    assert reviewed.status_code in {200, 201}, reviewed.content
    listener = stack.enter_context(mllp_listener())
    lis.register_endpoint(lab=member.lab, host=listener.host, port=listener.port)
    signed = pathologist_api.post(
        reverse("api:batch_report_sign", args=[batch_id]),
        {"wbc_count": "6.00", "comment": "normal", "below_minimum_reason": "test slide"},
        format="json",
    )
    assert signed.status_code == 200, signed.content
    assert lis.deliver_due() == 1

    bundle = api.get(reverse("api:batch_report_fhir", args=[batch_id])).json()
    Bundle.model_validate(bundle)
    (first,) = fhir.resources_of(bundle, "DiagnosticReport")
    assert first["effectiveDateTime"].startswith("2026-12-06T08:10:00")
    (patient,) = fhir.resources_of(bundle, "Patient")
    assert (patient["birthDate"], patient["gender"]) == ("1961-04-12", "female")
    (specimen,) = fhir.resources_of(bundle, "Specimen")
    assert specimen["type"]["text"] == "Venous blood, EDTA"
    assert specimen["receivedTime"].startswith("2026-12-06T09:00:00")
    assert (first["status"], first["meta"]["versionId"]) == ("final", "1")
    assert {"LAB", "HM"} <= {c["code"] for cat in first["category"] for c in cat["coding"]}
    assert first["code"]["coding"][0]["code"] == "24318-8"
    assert first["presentedForm"][0]["contentType"] == "application/pdf"
    percent = [o for o in fhir.resources_of(bundle, "Observation")
               if o["valueQuantity"]["code"] == "%"]  # fmt: skip
    assert percent
    assert all(o["valueQuantity"]["system"] == fhir.UCUM for o in percent)
    assert all("referenceRange" in o for o in percent if o["code"]["coding"][0]["system"]
               == fhir.LOINC)  # fmt: skip
    text, message = _hl7(api, reverse("api:batch_report_hl7", args=[batch_id]))
    assert _obr25(message) == "F"

    amended = pathologist_api.post(
        reverse("api:batch_report_amend", args=[batch_id]),
        {"reason": "comment corrected", "comment": "reviewed again"},
        format="json",
    )
    assert amended.status_code == 201, amended.content
    assert lis.deliver_due() == 1
    again = api.get(reverse("api:batch_report_fhir", args=[batch_id])).json()
    (second,) = fhir.resources_of(again, "DiagnosticReport")
    assert second["id"] == first["id"]
    assert again["entry"][0]["fullUrl"] == bundle["entry"][0]["fullUrl"]
    assert (second["status"], second["meta"]["versionId"]) == ("amended", "2")
    assert "comment corrected" in second["conclusion"]
    version_1 = api.get(reverse("api:batch_report_version_fhir", args=[batch_id, 1])).json()
    assert fhir.resources_of(version_1, "DiagnosticReport")[0]["meta"]["versionId"] == "1"
    _amended_text, amended_message = _hl7(api, reverse("api:batch_report_hl7", args=[batch_id]))
    assert _obr25(amended_message) == "C"
    old_text, old_message = _hl7(api, reverse("api:batch_report_version_hl7", args=[batch_id, 1]))
    # Version 1 is the same message (its MSH-7 is when the version last changed: superseded).
    assert (_obr25(old_message), old_text.split("\r")[1:]) == ("F", text.split("\r")[1:])

    pid = message.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_5.to_er7().startswith("Doe^Jane")
    assert [field.to_er7().split("^")[0] for field in pid.pid_3] == ["MRN-77", "LIS-1"]
    # Both versions went to the LIS through the outbox, and it acknowledged each.
    assert [d.status for d in LisDelivery.objects.order_by("pk")] == ["delivered", "delivered"]
    received = [parse_message(m, find_groups=True) for m in listener.messages]
    assert [_obr25(m) for m in received] == ["F", "C"]


def test_every_number_is_the_same_in_json_fhir_and_hl7(api: APIClient, case, tiny_model) -> None:
    from tests.factories import classified_batch

    batch: Batch = classified_batch(
        case=case,
        model_version=tiny_model,
        predictions=[("neutrophil", 0.99)] * 7 + [("lymphocyte", 0.99)] * 4,
    )
    report = batch.reports.get()
    report.wbc_count = Decimal("7.30")
    report.save()
    from webportal.reports.services import refresh_preliminary_report

    report = refresh_preliminary_report(batch=batch) or report
    body = api.get(reverse("api:batch_report", args=[batch.pk])).json()
    json_values = {
        (row["label"], kind): row[kind]
        for row in body["differential"]
        for kind in ("percent", "absolute")
        if row["group"] == "wbc" and row[kind] is not None
    }
    bundle = api.get(reverse("api:batch_report_fhir", args=[batch.pk])).json()
    fhir_values = {
        (obs["code"]["coding"][-1]["code"].split("-", 1)[1],
         "percent" if obs["valueQuantity"]["code"] == "%" else "absolute"):
        obs["valueQuantity"]["value"]
        for obs in fhir.resources_of(bundle, "Observation")
        if obs["valueQuantity"]["code"] in {"%", "10*9/L"}
    }  # fmt: skip
    _, message = _hl7(api, reverse("api:batch_report_hl7", args=[batch.pk]))
    observations = message.oru_r01_patient_result.oru_r01_order_observation.oru_r01_observation
    hl7_values = {
        (obx.obx.obx_3.to_er7().split("^")[1].split(" ")[0].split("/")[0].lower().rstrip("s"),
         "percent" if obx.obx.obx_6.to_er7().startswith("%") else "absolute"):
        float(obx.obx.obx_5.to_er7())
        for obx in observations
        if obx.obx.obx_6.to_er7().split("^")[0] in {"%", "10*9/L"}
    }  # fmt: skip
    assert json_values
    rows = {row["label"]: row for row in body["differential"]}
    assert (rows["neutrophil"]["loinc"], rows["neutrophil"]["unit"]) == ("26511-6", "%")
    assert (rows["neutrophil"]["absolute_loinc"], rows["neutrophil"]["absolute_unit"]) == (
        "26499-4",
        "10*9/L",
    )
    assert fhir_values == json_values
    assert hl7_values == json_values
