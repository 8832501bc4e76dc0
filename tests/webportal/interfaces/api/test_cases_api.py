from __future__ import annotations

import io

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from tests.conftest import noisy_jpeg_bytes
from tests.factories import CaseFactory
from webportal.cases import services
from webportal.cases.models import Case, ModelVersion

pytestmark = pytest.mark.django_db


def test_an_integrator_creates_a_case_in_its_lab_with_a_patient(api: APIClient, member) -> None:
    response = api.post(
        reverse("api:case_list"),
        {"accession_number": "H24-0001", "patient": "MRN-42", "clinical_note": "fever"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["lab"], body["patient"], body["status"]) == (member.lab.slug, "MRN-42", "new")
    assert Case.objects.get(pk=body["id"]).lab == member.lab


def test_a_second_case_with_the_same_accession_number_is_a_conflict(api: APIClient) -> None:
    api.post(reverse("api:case_list"), {"accession_number": "H24-0002"}, format="json")
    again = api.post(reverse("api:case_list"), {"accession_number": "H24-0002"}, format="json")
    assert again.status_code == 409
    assert again.json()["error"] == "conflict"
    assert Case.objects.filter(accession_number="H24-0002").count() == 1


def test_a_case_without_an_accession_number_gets_a_field_error(api: APIClient) -> None:
    response = api.post(reverse("api:case_list"), {"patient": "MRN-1"}, format="json")
    assert response.status_code == 400
    assert list(response.json()["fields"]) == ["accession_number"]


def test_cases_are_filtered_by_accession_patient_status_and_date(
    api: APIClient, member, tiny_model: ModelVersion
) -> None:
    lab = member.lab
    with_batch = services.create_case(
        lab=lab, created_by=None, accession_number="A-1", patient_external_id="P-1"
    )
    services.submit_batch(
        case=with_batch, created_by=None, files=[("a.jpg", io.BytesIO(noisy_jpeg_bytes()))]
    )
    services.create_case(
        lab=lab, created_by=None, accession_number="A-2", patient_external_id="P-2"
    )
    url = reverse("api:case_list")

    def accessions(**query: str) -> list[str]:
        response = api.get(url, query)
        assert response.status_code == 200, response.content
        return sorted(case["accession_number"] for case in response.json()["results"])

    assert accessions() == ["A-1", "A-2"]
    assert accessions(accession="A-2") == ["A-2"]
    assert accessions(patient="P-1") == ["A-1"]
    assert accessions(status="queued") == ["A-1"]
    assert accessions(status="new") == ["A-2"]
    today = with_batch.created_at.date().isoformat()
    assert accessions(created_after=today, created_before=today) == ["A-1", "A-2"]
    assert accessions(created_after="2999-01-01") == []
    bad = api.get(url, {"status": "nonsense"})
    assert bad.status_code == 400
    assert "status" in bad.json()["fields"]


def test_a_patient_shows_their_case_history_and_only_their_labs(api: APIClient, member) -> None:
    first = services.create_case(
        lab=member.lab, created_by=None, accession_number="C-1", patient_external_id="MRN-7"
    )
    second = services.create_case(
        lab=member.lab, created_by=None, accession_number="C-2", patient_external_id="MRN-7"
    )
    foreign = services.create_case(
        lab=CaseFactory.create().lab,
        created_by=None,
        accession_number="C-3",
        patient_external_id="MRN-7",
    )
    listed = api.get(reverse("api:patient_list"), {"external_id": "MRN-7"}).json()["results"]
    assert [patient["id"] for patient in listed] == [first.patient_id]
    detail = api.get(reverse("api:patient_detail", args=[first.patient_id])).json()
    assert [case["accession_number"] for case in detail["cases"]] == ["C-2", "C-1"]
    assert second.patient_id == first.patient_id
    foreign_url = reverse("api:patient_detail", args=[foreign.patient_id])
    assert api.get(foreign_url).status_code == 404


def test_an_unknown_api_path_answers_404_in_the_error_shape(api: APIClient) -> None:
    response = api.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_a_wrong_method_answers_405_in_the_error_shape(api: APIClient, case) -> None:
    response = api.delete(reverse("api:case_detail", args=[case.pk]))
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"


def test_a_case_is_created_with_the_patient_as_an_object_the_specimen_and_requester(
    api: APIClient,
) -> None:
    response = api.post(
        reverse("api:case_list"),
        {
            "accession_number": "H24-0100",
            "patient": {
                "identifier": "MRN-42",
                "family_name": "Doe",
                "given_name": "Jane",
                "birth_date": "1961-04-12",
                "sex": "female",
            },
            "specimen": {
                "type": "Venous blood, EDTA",
                "collected_at": "2026-03-02T08:10:00Z",
                "received_at": "2026-03-02T09:02:00Z",
            },
            "requester": "Dr R. Osler",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["patient"] == "MRN-42"
    assert body["requester"] == "Dr R. Osler"
    assert body["specimen"]["type"] == "Venous blood, EDTA"
    assert body["specimen"]["received_at"].startswith("2026-03-02T09:02:00")
    case = Case.objects.get(pk=body["id"])
    assert case.patient is not None
    assert (case.patient.name, str(case.patient.birth_date)) == ("DOE, Jane", "1961-04-12")
    patient = api.get(reverse("api:patient_detail", args=[case.patient.pk])).json()
    assert (patient["family_name"], patient["birth_date"], patient["sex"]) == (
        "Doe",
        "1961-04-12",
        "female",
    )


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"patient": {"family_name": "Doe"}}, "patient", "required"),
        ({"patient": {"identifier": "M-1", "sex": "f"}}, "patient", "not a sex the lab records"),
        ({"patient": {"identifier": "M-1", "birth_date": "12/04/1961"}}, "patient", "format"),
        ({"patient": {"identifier": "M-1", "birthdate": "1961-04-12"}}, "patient", "birthdate"),
        ({"patient": 42}, "patient", "as its identifier"),
        ({"specimen": {"collected_at": "yesterday"}}, "specimen", "format"),
        ({"specimen": {"kind": "blood"}}, "specimen", "Unknown field in specimen: kind"),
        ({"requester": "x" * 201}, "requester", "200"),
    ],
)
def test_bad_patient_specimen_or_requester_values_are_a_400_naming_the_field(
    api: APIClient, body: dict[str, object], field: str, message: str
) -> None:
    response = api.post(
        reverse("api:case_list"), {"accession_number": "H24-0101", **body}, format="json"
    )
    assert response.status_code == 400, response.content
    assert field in response.json()["fields"]
    assert message in str(response.json()["fields"][field])
    assert not Case.objects.filter(accession_number="H24-0101").exists()


def test_a_specimen_received_before_it_was_collected_is_a_400_saying_so(api: APIClient) -> None:
    response = api.post(
        reverse("api:case_list"),
        {
            "accession_number": "H24-0102",
            "specimen": {
                "collected_at": "2026-03-02T09:00:00Z",
                "received_at": "2026-03-02T08:00:00Z",
            },
        },
        format="json",
    )
    assert response.status_code == 400
    assert "received before it was collected" in response.json()["detail"]
