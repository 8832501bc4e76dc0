"""Bad input answers 400 with a reason, never 500; names from lab data cannot inject headers."""

from __future__ import annotations

import io
import re

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from tests.factories import MembershipFactory
from tests.webportal.conftest import bearer
from webportal.accounts.models import Role
from webportal.api import tokens
from webportal.cases import services
from webportal.cases.models import ModelVersion
from webportal.downloads import content_disposition
from webportal.pipeline import batch_job
from webportal.reports.models import Report

pytestmark = pytest.mark.django_db

HUGE = "544949997673097228976128"


@pytest.mark.parametrize("value", [HUGE, "-1", "0", "1.5", str(2**63)])
def test_an_id_filter_out_of_range_is_a_400(api: APIClient, value: str) -> None:
    response = api.get(reverse("api:batch_list"), {"case": value})
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid"


def test_cells_out_of_range_in_a_review_are_a_400(member, tiny_model: ModelVersion) -> None:
    staff = MembershipFactory.create(lab=member.lab, role=Role.STAFF)
    api = bearer(tokens.issue_personal_token(user=staff.user, lab=member.lab).plaintext)
    case = services.create_case(lab=member.lab, created_by=None, accession_number="IN-1")
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    for cells in ([int(HUGE)], [2**63], [-5]):
        response = api.post(
            reverse("api:batch_reviews", args=[batch.pk]),
            {"cells": cells, "label": "not classed"},
            format="json",
        )
        assert response.status_code == 400, response.content
        assert "cells" in response.json()["fields"]


@pytest.mark.parametrize("depth", [100_000, 33])
def test_json_nested_too_deep_is_a_400(api: APIClient, depth: int) -> None:
    body = "[" * depth + "]" * depth
    response = api.generic("POST", reverse("api:case_list"), body, content_type="application/json")
    assert response.status_code == 400, response.content[:200]
    assert "nested" in response.json()["detail"]


def test_json_of_ordinary_depth_still_parses(api: APIClient) -> None:
    response = api.post(
        reverse("api:case_list"),
        {"accession_number": "DEPTH-1", "patient": "MRN-1", "clinical_note": '[{"x": 1}]'},
        format="json",
    )
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    "name",
    [
        'A"; filename="evil.exe',
        "../../etc/passwd",
        "bad\r\nSet-Cookie: x=1",
        "tab\there\x00nul",
        "Größe ü",
    ],
)
def test_a_content_disposition_filename_is_one_safe_token_and_a_utf8_name(name: str) -> None:
    header = content_disposition(name + ".pdf")
    assert header.count("filename=") == 1
    assert header.count("filename*=UTF-8''") == 1
    fallback = re.fullmatch(r'attachment; filename="([A-Za-z0-9._-]+)"; filename\*=UTF-8\'\'(\S+)',
                            header)  # fmt: skip
    assert fallback is not None, header
    assert "/" not in fallback.group(1)
    assert not fallback.group(1).startswith(".")
    assert all(32 < ord(ch) < 127 for ch in header.split("filename*=")[1])


def test_an_accession_number_with_a_quote_cannot_inject_into_the_pdf_downloads(
    api: APIClient, member, tiny_model: ModelVersion
) -> None:
    case = services.create_case(
        lab=member.lab, created_by=None, accession_number='ACC"; filename="x.exe'
    )
    batch = services.submit_batch(
        case=case, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    batch_job.process_batch(batch_id=batch.pk)
    pdf = api.get(reverse("api:batch_report_pdf", args=[batch.pk]))
    assert pdf.status_code == 200
    assert pdf["Content-Disposition"].count("filename=") == 1
    assert 'x.exe"' not in pdf["Content-Disposition"]
    client = Client()
    client.force_login(MembershipFactory.create(lab=member.lab, role=Role.PATHOLOGIST).user)
    report = Report.objects.get(batch=batch)
    portal = client.get(reverse("reports:pdf", args=[report.pk]))
    assert portal.status_code == 200
    assert portal["Content-Disposition"].count("filename=") == 1


@pytest.mark.parametrize("name", ["page", "page_size"])
@pytest.mark.parametrize("value", ["null", "0", "-1", "1.5", "", "last", HUGE])
def test_a_page_or_page_size_that_is_not_a_whole_number_from_1_is_a_400(
    api: APIClient, name: str, value: str
) -> None:
    response = api.get(reverse("api:case_list"), {name: value})
    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == [name]


def test_a_page_size_above_500_is_a_400_and_500_is_a_page(api: APIClient) -> None:
    assert api.get(reverse("api:case_list"), {"page_size": 501}).status_code == 400
    response = api.get(reverse("api:case_list"), {"page_size": 500, "page": 1})
    assert response.status_code == 200
    assert response.json()["results"] == []


def test_a_page_past_the_end_is_a_404(api: APIClient) -> None:
    assert api.get(reverse("api:case_list"), {"page": 2}).status_code == 404


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("api:case_list", "created_before"),
        ("api:case_list", "status"),
        ("api:batch_list", "case"),
        ("api:batch_list", "priority"),
    ],
)
def test_an_empty_filter_value_is_a_400_not_no_filter(api: APIClient, url: str, name: str) -> None:
    response = api.get(reverse(url), {name: ""})
    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == [name]


def test_an_empty_text_filter_still_means_any(api: APIClient) -> None:
    assert api.get(reverse("api:case_list"), {"accession": ""}).status_code == 200


def test_the_schema_gives_an_id_filter_its_range() -> None:
    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    (case,) = [p for p in schema["paths"]["/api/v1/batches/"]["get"]["parameters"]
               if p["name"] == "case"]  # fmt: skip
    assert case["schema"]["minimum"] == 1
    assert case["schema"]["maximum"] == 2**63 - 1


@pytest.mark.parametrize("value", [0, 1.5, True, ["note"], {"a": 1}])
def test_a_number_or_boolean_for_a_text_field_is_a_400_not_text(api: APIClient, value) -> None:
    response = api.post(
        reverse("api:case_list"),
        {"accession_number": "STR-1", "clinical_note": value},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["fields"]) == ["clinical_note"]


def test_a_number_for_a_nested_text_field_is_a_400(api: APIClient) -> None:
    response = api.post(
        reverse("api:case_list"),
        {"accession_number": "STR-2", "specimen": {"type": 7}},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "specimen" in response.json()["fields"]
