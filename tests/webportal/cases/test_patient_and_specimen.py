"""A case's patient (identifier, name, birth date, sex), specimen and requester: what a report
must carry (ISO 15189:2022 7.4.1.6), through the service and the portal's case form."""

from __future__ import annotations

from datetime import UTC as utc
from datetime import date, datetime, timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from webportal.audit.models import AuditEvent
from webportal.cases import services
from webportal.cases.models import Case, Patient
from webportal.cases.services import PatientDetails, ServiceError, SpecimenDetails

pytestmark = pytest.mark.django_db

COLLECTED = datetime(2026, 3, 2, 8, 10, tzinfo=utc)
RECEIVED = datetime(2026, 3, 2, 9, 2, tzinfo=utc)


def _jane(**changes: object) -> PatientDetails:
    fields: dict[str, object] = {
        "identifier": "MRN-42",
        "family_name": "Doe",
        "given_name": "Jane",
        "birth_date": date(1961, 4, 12),
        "sex": "female",
        **changes,
    }
    return PatientDetails(**fields)  # type: ignore[arg-type]


def test_a_case_keeps_the_patients_details_the_specimen_and_the_requester(member) -> None:
    case = services.create_case(
        lab=member.lab,
        created_by=member.user,
        accession_number="H-1",
        patient=_jane(),
        specimen=SpecimenDetails(
            type="Venous blood, EDTA", collected_at=COLLECTED, received_at=RECEIVED
        ),
        requester="Dr R. Osler, Haematology clinic",
    )
    case.refresh_from_db()
    patient = case.patient
    assert patient is not None
    assert (patient.external_id, patient.name, patient.birth_date, patient.sex) == (
        "MRN-42",
        "DOE, Jane",
        date(1961, 4, 12),
        "female",
    )
    assert (case.specimen_type, case.specimen_collected_at, case.specimen_received_at) == (
        "Venous blood, EDTA",
        COLLECTED,
        RECEIVED,
    )
    assert case.requester == "Dr R. Osler, Haematology clinic"
    after = AuditEvent.objects.get(action="case.created", object_id=str(case.pk)).after
    assert after is not None
    assert after["patient_name"] == "DOE, Jane"
    assert after["requester"] == "Dr R. Osler, Haematology clinic"
    assert after["specimen_type"] == "Venous blood, EDTA"


def test_the_identifier_alone_still_makes_a_case_as_before(member) -> None:
    case = services.create_case(
        lab=member.lab, created_by=None, accession_number="H-2", patient_external_id="MRN-7"
    )
    assert case.patient is not None
    assert (case.patient.external_id, case.patient.name, case.patient.sex) == ("MRN-7", "", "")
    assert (case.specimen_type, case.specimen_collected_at, case.requester) == ("", None, "")


def test_a_known_patient_gains_missing_details_but_contradicting_ones_are_refused(member) -> None:
    services.create_case(
        lab=member.lab, created_by=None, accession_number="H-3", patient_external_id="MRN-42"
    )
    services.create_case(lab=member.lab, created_by=None, accession_number="H-4", patient=_jane())
    patient = Patient.objects.get(lab=member.lab, external_id="MRN-42")
    assert (patient.name, patient.birth_date) == ("DOE, Jane", date(1961, 4, 12))
    with pytest.raises(ServiceError, match=r"MRN-42 is on record with birth date 1961-04-12"):
        services.create_case(
            lab=member.lab,
            created_by=None,
            accession_number="H-5",
            patient=_jane(birth_date=date(1962, 4, 12)),
        )
    assert not Case.objects.filter(accession_number="H-5").exists()
    assert Patient.objects.get(pk=patient.pk).birth_date == date(1961, 4, 12)


@pytest.mark.parametrize(
    ("patient", "specimen", "message"),
    [
        (_jane(sex="f"), SpecimenDetails(), r'"f" is not a sex the lab records'),
        (
            _jane(birth_date=date.today() + timedelta(days=2)),
            SpecimenDetails(),
            r"birth date .* is in the future",
        ),
        (_jane(identifier=""), SpecimenDetails(), r"needs an identifier"),
        (_jane(family_name="x" * 101), SpecimenDetails(), r"family name has at most 100"),
        (
            _jane(),
            SpecimenDetails(collected_at=RECEIVED, received_at=COLLECTED),
            r"received before it was collected",
        ),
        (
            _jane(),
            SpecimenDetails(collected_at=timezone.now() + timedelta(hours=2)),
            r"cannot be collected in the future",
        ),
        (
            _jane(birth_date=date(2026, 3, 5)),
            SpecimenDetails(collected_at=COLLECTED),
            r"collected before the patient's birth date",
        ),
    ],
)
def test_bad_patient_or_specimen_details_are_refused_with_a_clear_message(
    member, patient: PatientDetails, specimen: SpecimenDetails, message: str
) -> None:
    with pytest.raises(ServiceError, match=message):
        services.create_case(
            lab=member.lab,
            created_by=None,
            accession_number="H-9",
            patient=patient,
            specimen=specimen,
        )
    assert not Case.objects.filter(accession_number="H-9").exists()
    assert not Patient.objects.filter(external_id=patient.identifier or "-").exists()


@pytest.fixture
def client_of(member) -> Client:
    client = Client()
    client.force_login(member.user)
    return client


def test_the_case_form_takes_the_patient_the_specimen_and_the_requester(
    client_of: Client, member
) -> None:
    page = client_of.get(reverse("cases:case_list")).content.decode()
    for name in ("family_name", "birth_date", "specimen_type", "specimen_received_at"):
        assert f'name="{name}"' in page
    response = client_of.post(
        reverse("cases:case_list"),
        {
            "lab": member.lab.pk,
            "accession_number": "H-77",
            "patient_external_id": "MRN9",
            "family_name": "Doe",
            "given_name": "Jane",
            "birth_date": "1961-04-12",
            "sex": "female",
            "specimen_type": "Venous blood, EDTA",
            "specimen_collected_at": "2026-03-02T08:10",
            "specimen_received_at": "2026-03-02T09:02",
            "requester": "Ward 7",
        },
    )
    assert response.status_code == 302
    case = Case.objects.get(accession_number="H-77")
    assert case.patient is not None
    assert (case.patient.name, case.patient.sex) == ("DOE, Jane", "female")
    assert (case.specimen_type, case.requester) == ("Venous blood, EDTA", "Ward 7")
    assert case.specimen_received_at is not None
    assert case.specimen_collected_at is not None
    assert case.specimen_received_at - case.specimen_collected_at == timedelta(minutes=52)


def test_the_case_form_shows_a_bad_specimen_time_and_keeps_what_was_typed(
    client_of: Client, member
) -> None:
    response = client_of.post(
        reverse("cases:case_list"),
        {
            "lab": member.lab.pk,
            "accession_number": "H-78",
            "patient_external_id": "MRN9",
            "family_name": "Doe",
            "specimen_collected_at": "2026-03-02T09:10",
            "specimen_received_at": "2026-03-02T08:02",
        },
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "received before it was collected" in page
    assert 'value="Doe"' in page
    assert not Case.objects.filter(accession_number="H-78").exists()
