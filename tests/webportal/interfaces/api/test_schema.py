from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_schema_is_openapi_3_and_documents_v1_only() -> None:
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert all(path.startswith("/api/v1/") for path in schema["paths"])
    assert "/api/v1/batches/{batch_id}/report/fhir/" in schema["paths"]
    assert schema["components"]["securitySchemes"]["integratorToken"]["scheme"] == "bearer"
    assert "Error" in schema["components"]["schemas"]


def test_the_upload_takes_an_image_kind_and_the_batch_shows_it() -> None:
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    schema = response.json()
    upload = schema["paths"]["/api/v1/cases/{case_id}/batches/"]["post"]["requestBody"]
    ref = upload["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    kind = schema["components"]["schemas"][ref]["properties"]["image_kind"]
    if "$ref" in kind or "allOf" in kind:  # an enum component
        target = (kind.get("$ref") or kind["allOf"][0]["$ref"]).rsplit("/", 1)[-1]
        kind = schema["components"]["schemas"][target]
    assert kind["enum"] == ["auto", "field", "cell"]
    assert "image_kind" in schema["components"]["schemas"]["Batch"]["properties"]


def test_the_docs_page_has_no_inline_script_and_its_assets_come_from_this_server() -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts
    assert all("src=" in attributes and not body.strip() for attributes, body in scripts)
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not src.startswith(("http://", "https://", "//")), src
        assert Client().get(src).status_code == 200, src


def _schema() -> Any:
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    return response.json()


def test_request_bodies_are_json_except_the_upload_of_files() -> None:
    schema = _schema()
    bodies = {
        (method, path): list(operation["requestBody"]["content"])
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }
    assert bodies.pop(("post", "/api/v1/cases/{case_id}/batches/")) == ["multipart/form-data"]
    assert bodies
    assert all(types == ["application/json"] for types in bodies.values()), bodies


def test_the_batch_cells_are_documented_as_a_page_with_page_limits() -> None:
    operation = _schema()["paths"]["/api/v1/batches/{batch_id}/cells/"]["get"]
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert "PaginatedCellList" in body["$ref"]
    limits = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert limits["page_size"]["minimum"] == 1
    assert limits["page_size"]["maximum"] == 500


def test_every_list_documents_its_page_limits() -> None:
    operation = _schema()["paths"]["/api/v1/cases/"]["get"]
    limits = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert limits["page"]["minimum"] == 1
    assert (limits["page_size"]["minimum"], limits["page_size"]["maximum"]) == (1, 500)


def test_the_report_documents_its_hl7_representation() -> None:
    responses = _schema()["paths"]["/api/v1/batches/{batch_id}/report/"]["get"]["responses"]
    assert "application/hl7-v2" in responses["200"]["content"]
