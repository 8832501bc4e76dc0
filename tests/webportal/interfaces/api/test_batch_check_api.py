"""The batch guard's verdict over the API: the batch, its report and the report's flags."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.factories import ModelVersionFactory, classified_batch
from webportal.cases import batch_check
from webportal.cases.models import Batch
from webportal.reports import fhir

pytestmark = pytest.mark.django_db


def test_a_flagged_batch_says_so_with_its_figures_in_the_batch_and_the_report(
    api: APIClient, case
) -> None:
    batch = classified_batch(
        case=case,
        model_version=ModelVersionFactory.create(),
        predictions=[("neutrophil", 0.99)] * 3,
        ood_check=Batch.Check.FLAGGED,
        ood_score=6.137,
        ood_threshold=3.168,
        ood_threshold_size=20,
        ood_cells_checked=3,
    )

    body = api.get(reverse("api:batch_detail", args=[batch.pk])).json()
    report = api.get(reverse("api:batch_report", args=[batch.pk])).json()

    check = body["batch_check"]
    assert check["status"] == "flagged"
    assert check["flagged"] is True
    assert check["auto_accepts"] is False
    assert check["score"] == pytest.approx(6.137)
    assert check["threshold"] == pytest.approx(3.168)
    assert check["threshold_batch_size"] == 20
    assert check["cells_checked"] == 3
    assert check["headline"] == batch_check.HEADLINE
    assert "No cell is accepted automatically" in check["explanation"]
    assert "Distance score 6.14, above the limit of 3.17" in check["figures"]
    assert report["batch_check"] == check
    assert report["flags"][0]["code"] == batch_check.FLAG_CODE
    assert {row["label"]: row["count"] for row in report["differential"]}["unidentified"] == 3
    cells = api.get(reverse("api:batch_cells", args=[batch.pk])).json()["results"]
    assert {cell["current_label"] for cell in cells} == {"unidentified"}
    bundle = api.get(reverse("api:batch_report_fhir", args=[batch.pk])).json()
    (diagnostic,) = fhir.resources_of(bundle, "DiagnosticReport")
    assert report["flags"][0]["message"] in diagnostic["conclusion"]
    assert "3 cell(s) not auto-accepted are not classed" in diagnostic["conclusion"]


def test_a_batch_never_checked_has_no_verdict_and_one_without_a_guard_says_so(
    api: APIClient, case
) -> None:
    model = ModelVersionFactory.create()
    old = classified_batch(case=case, model_version=model, predictions=[("neutrophil", 0.99)])
    unguarded = classified_batch(
        case=case,
        model_version=model,
        predictions=[("neutrophil", 0.99)],
        ood_check=Batch.Check.NO_GUARD,
    )

    assert api.get(reverse("api:batch_detail", args=[old.pk])).json()["batch_check"] is None
    check = api.get(reverse("api:batch_detail", args=[unguarded.pk])).json()["batch_check"]
    assert check["status"] == "no_guard"
    assert check["auto_accepts"] is True
    assert check["score"] is None


def test_the_schema_documents_the_verdict() -> None:
    from django.test import Client

    schema = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    check = schema["components"]["schemas"]["BatchCheck"]
    assert {"status", "flagged", "score", "threshold", "threshold_batch_size"} <= set(
        check["properties"]
    )
