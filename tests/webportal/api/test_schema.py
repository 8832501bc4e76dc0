from __future__ import annotations

import re

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
