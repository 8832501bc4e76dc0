"""Issue 19's contracts over the API: `below_minimum_reason` on sign (409 without it under the
lab's minimum, 409 always with no leukocyte), the report's intervals, verification and
critical flag, and an amendment that keeps the reason."""

from __future__ import annotations

import pytest

from tests.factories import classified_batch
from tests.webportal.conftest import bearer
from webportal.accounts.models import Role
from webportal.api import tokens
from webportal.cases.models import Cell
from webportal.reports.reviews import review_cells


@pytest.fixture
def batch(lab_case, model_version):
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.9)] * 20 + [("lymphocyte", 0.9)] * 7,
    )


@pytest.fixture
def pathologist_api(batch, people):
    issued = tokens.issue_personal_token(user=people[Role.PATHOLOGIST], lab=batch.case.lab)
    return bearer(issued.plaintext)


def test_signing_under_the_minimum_needs_a_reason_and_the_report_carries_it(
    batch, pathologist_api
) -> None:
    sign = f"/api/v1/batches/{batch.pk}/report/sign/"
    refused = pathologist_api.post(sign, {}, format="json")
    assert refused.status_code == 409
    assert "27 leukocytes counted, under the lab's minimum of 100" in refused.json()["detail"]
    signed = pathologist_api.post(
        sign, {"below_minimum_reason": "Leukopenia: all cells counted."}, format="json"
    )
    assert signed.status_code == 200, signed.content
    body = signed.json()
    assert body["status"] == "final"
    assert body["below_minimum_reason"] == "Leukopenia: all cells counted."
    assert body["critical"] is False
    rows = {row["label"]: row for row in body["differential"]}
    assert (rows["neutrophil"]["percent"], rows["neutrophil"]["ci_low"]) == (74.1, 53.7)
    assert rows["neutrophil"]["loinc"] == "26511-6"
    verification = body["verification"]
    assert (verification["person_verified_cells"], verification["model_accepted_cells"]) == (0, 27)
    assert verification["every_cell_verified_by_a_person"] is False
    assert verification["model"] == batch.model_version.name

    amended = pathologist_api.post(
        f"/api/v1/batches/{batch.pk}/report/amend/", {"reason": "Comment added."}, format="json"
    )
    assert amended.status_code == 201, amended.content
    assert amended.json()["below_minimum_reason"] == "Leukopenia: all cells counted."


def test_a_report_with_no_leukocyte_is_never_signed(batch, people, pathologist_api) -> None:
    review_cells(
        actor=people[Role.STAFF], cells=Cell.objects.filter(image__batch=batch), label="artefact"
    )
    refused = pathologist_api.post(
        f"/api/v1/batches/{batch.pk}/report/sign/",
        {"below_minimum_reason": "Sign it anyway."},
        format="json",
    )
    assert refused.status_code == 409
    assert "no leukocyte is counted" in refused.json()["detail"]
    report = pathologist_api.get(f"/api/v1/batches/{batch.pk}/report/").json()
    assert report["status"] == "preliminary"
    assert report["wbc_cells"] == 0
