"""The typed client against a live server (no worker: batches stay queued)."""

from __future__ import annotations

import pytest

from tests.conftest import noisy_jpeg_bytes
from webportal.api import tokens
from webportal.api.client import ApiError, Client
from webportal.cases.models import Batch, ModelVersion

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_client_creates_uploads_retries_cancels_and_raises_the_error_shape(
    live_server, member, tiny_model: ModelVersion
) -> None:
    api = Client(live_server.url, token=tokens.issue_token(lab=member.lab, username="c").plaintext)
    case = api.create_case(accession_number="CL-1", patient="MRN-5")
    assert [c["id"] for c in api.cases(patient="MRN-5")] == [case["id"]]
    files = [("a.jpg", noisy_jpeg_bytes()), ("b.jpg", noisy_jpeg_bytes())]
    batch = api.upload_batch(case["id"], files, priority="stat", idempotency_key="k-1")
    again = api.upload_batch(case["id"], files, priority="stat", idempotency_key="k-1")
    assert again["id"] == batch["id"]
    assert Batch.objects.filter(case_id=case["id"]).count() == 1
    assert api.batch(batch["id"])["total_images"] == 2
    assert batch["image_kind"] == "auto"
    fields = api.upload_batch(case["id"], [("f.jpg", noisy_jpeg_bytes())], image_kind="field")
    assert Batch.objects.get(pk=fields["id"]).image_kind == fields["image_kind"] == "field"
    assert api.cancel_batch(batch["id"])["status"] == "cancelled"
    with pytest.raises(ApiError) as conflict:
        api.cancel_batch(batch["id"])
    assert (conflict.value.status, conflict.value.code) == (409, "conflict")
    with pytest.raises(ApiError) as missing:
        api.report(batch["id"])
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as invalid:
        api.create_case(accession_number="")
    assert "accession_number" in invalid.value.fields


def test_the_client_fetches_the_report_as_a_fhir_bundle_and_an_hl7_message(
    live_server, member, tiny_model: ModelVersion
) -> None:
    from webportal.pipeline import batch_job

    api = Client(live_server.url, token=tokens.issue_token(lab=member.lab, username="c").plaintext)
    case = api.create_case(accession_number="CL-2", patient="MRN-6")
    batch = api.upload_batch(case["id"], [("a.jpg", noisy_jpeg_bytes())])
    batch_job.process_batch(batch_id=batch["id"])
    bundle = api.report_fhir(batch["id"])
    assert bundle["resourceType"] == "Bundle"
    assert bundle["entry"][0]["resource"]["code"]["coding"][0]["code"] == "24318-8"
    message = api.report_hl7(batch["id"], version=1)
    segments = [segment.split("|")[0] for segment in message.split("\r") if segment]
    assert segments[:4] == ["MSH", "PID", "ORC", "OBR"]
    assert "|CL-2^HEMATOVISION|" in message
