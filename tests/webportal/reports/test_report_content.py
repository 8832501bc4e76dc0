"""What a report carries besides its numbers (ISO 15189:2022, 7.4.1.6), through the services,
the report page, the PDF and the API: the lab, the patient's two identifiers, sex and age, the
specimen, the requester, the signer's name and title, the time of issue, page x of y, the end
of the report, what an amendment changed, absolute counts with their own ranges, the WBC count
corrected for NRBC, and reference intervals chosen by sex and age."""

from __future__ import annotations

import io
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader

from tests.factories import ModelVersionFactory, classified_batch
from tests.webportal.conftest import bearer
from webportal.accounts.models import Role
from webportal.accounts.services import update_lab_details, update_person
from webportal.api import tokens
from webportal.cases.models import Cell
from webportal.cases.services import PatientDetails, ServiceError, SpecimenDetails, create_case
from webportal.reports import services, wording
from webportal.reports.content import NOT_VERIFIED_SUPPORT, age_on, amendment_of, header_of
from webportal.reports.differential import build_differential, corrected_wbc
from webportal.reports.pdf import render_report_pdf
from webportal.reports.reviews import review_cells

pytestmark = pytest.mark.django_db

CLASSES = ["basophil", "eosinophil", "erythroblast", "lymphocyte", "monocyte", "neutrophil"]
SMEAR = {"neutrophil": 62, "lymphocyte": 25, "monocyte": 8, "eosinophil": 4, "basophil": 1}


def _pages(pdf: bytes) -> list[str]:
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(pdf)).pages]


@pytest.fixture
def setting(lab, people):
    """A lab with its details, a pathologist with a name and title, a case with a patient's
    details and a specimen: the batch's preliminary report, 100 leukocytes and 5 NRBC."""
    update_lab_details(
        admin=people[Role.ADMIN],
        lab=lab,
        address="1 Infirmary Road\nOxford OX3 9DU",
        accreditation="UKAS 8123",
        director="Dr Grace Hopper",
    )
    update_person(
        admin=people[Role.ADMIN],
        membership=people[Role.PATHOLOGIST].memberships.get(lab=lab),
        first_name="Ada",
        last_name="Lovelace",
        title="Consultant haematologist",
    )
    collected = timezone.now() - timedelta(hours=3)
    case = create_case(
        lab=lab,
        created_by=None,
        accession_number="H-1",
        patient=PatientDetails(
            identifier="MRN-1",
            family_name="Doe",
            given_name="Jane",
            birth_date=date(1961, 4, 12),
            sex="female",
        ),
        specimen=SpecimenDetails(
            type="Venous blood, EDTA", collected_at=collected, received_at=collected
        ),
        requester="Ward 7",
    )
    batch = classified_batch(
        case=case,
        model_version=ModelVersionFactory.create(classes=CLASSES, threshold=0.5),
        predictions=[
            (label, 0.9) for label, n in {**SMEAR, "erythroblast": 5}.items() for _ in range(n)
        ],
    )
    return batch.reports.get()


# --- the differential: NRBC correction and absolute ranges -----------------------------------


def test_the_wbc_count_is_corrected_for_nrbc_with_the_stated_formula() -> None:
    # 11.3 x 100 / (100 + 5): 10.7619...
    assert float(corrected_wbc(wbc_count=Decimal("11.3"), nrbc=5, wbc_cells=100)) == pytest.approx(
        10.761904, abs=1e-6
    )
    assert corrected_wbc(wbc_count=Decimal("11.3"), nrbc=0, wbc_cells=100) == Decimal("11.3")
    with_nrbc = build_differential(
        classes=CLASSES, counts={**SMEAR, "erythroblast": 5}, wbc_count=Decimal("11.3")
    )
    without = build_differential(classes=CLASSES, counts=SMEAR, wbc_count=Decimal("11.3"))
    assert with_nrbc.corrected_wbc == Decimal("10.76")
    assert without.corrected_wbc is None
    neutrophil = with_nrbc.row("neutrophil")
    assert neutrophil is not None
    assert neutrophil.absolute == 6.67  # 62 % of 10.76, not of 11.3 (7.01)
    uncorrected = without.row("neutrophil")
    assert uncorrected is not None
    assert uncorrected.absolute == 7.01


def test_the_wbc_count_is_corrected_only_from_the_labs_nrbc_threshold() -> None:
    def corrected(nrbc: int, nrbc_correction_from: int | None = 5) -> Decimal | None:
        return build_differential(
            classes=CLASSES,
            counts={**SMEAR, "erythroblast": nrbc},
            wbc_count=Decimal("11.3"),
            nrbc_correction_from=nrbc_correction_from,
        ).corrected_wbc

    assert corrected(4) is None  # under 5 per 100 WBC, the usual rule
    assert corrected(5) == Decimal("10.76")
    assert corrected(2, nrbc_correction_from=1) == Decimal("11.08")
    assert corrected(40, nrbc_correction_from=None) is None  # the analyser excludes NRBC


def test_a_lab_whose_analyser_excludes_nrbc_gets_no_correction(setting, people) -> None:
    lab = setting.batch.case.lab
    update_lab_details(
        admin=people[Role.ADMIN],
        lab=lab,
        address=lab.address,
        accreditation=lab.accreditation,
        director=lab.director,
        nrbc_correction_from=None,
    )
    report = services.sign_report(
        actor=people[Role.PATHOLOGIST], report=setting, wbc_count=Decimal("11.3")
    )
    assert report.corrected_wbc_count is None
    neutrophil = next(row for row in report.differential if row["label"] == "neutrophil")
    assert neutrophil["absolute"] == 7.01


def test_absolute_counts_are_flagged_against_their_own_ranges() -> None:
    differential = build_differential(
        classes=CLASSES,
        counts=SMEAR,
        wbc_count=Decimal("12.0"),
        absolute_ranges={"neutrophil": (2.0, 7.0), "lymphocyte": (1.0, 3.0)},
    )
    neutrophil, lymphocyte = differential.row("neutrophil"), differential.row("lymphocyte")
    assert neutrophil is not None
    assert lymphocyte is not None
    # 62 % of 12.0 = 7.44: above 7.0 although 62 % is inside 40-75 %.
    assert (neutrophil.absolute, neutrophil.absolute_flag, neutrophil.flag) == (7.44, "H", "")
    assert (neutrophil.absolute_low, neutrophil.absolute_high) == (2.0, 7.0)
    assert (lymphocyte.absolute, lymphocyte.absolute_flag) == (3.0, "")
    messages = [flag.message for flag in differential.flags]
    assert "neutrophil 7.44 x10^9/L is above the reference range 2-7 x10^9/L." in messages


# --- reference intervals by sex and age -------------------------------------------------------


def test_reference_intervals_are_chosen_by_sex_and_age_band(lab, people) -> None:
    admin = people[Role.ADMIN]
    services.set_reference_range(
        actor=admin, lab=lab, label="neutrophil", low_percent=45, high_percent=70, sex="female"
    )
    services.set_reference_range(
        actor=admin,
        lab=lab,
        label="neutrophil",
        low_percent=20,
        high_percent=50,
        low_absolute=1.5,
        high_absolute=8.5,
        age_from_years=1,
        age_to_years=12,
    )
    pick = services.reference_intervals_for
    assert pick(lab=lab, sex="female", age_years=40).percent["neutrophil"] == (45, 70)
    assert pick(lab=lab, sex="male", age_years=40).percent["neutrophil"] == (40.0, 75.0)
    child = pick(lab=lab, sex="male", age_years=5)
    assert child.percent["neutrophil"] == (20, 50)
    assert child.absolute["neutrophil"] == (1.5, 8.5)
    # The age band is narrower than "any age": it wins for a girl of 5 too.
    assert pick(lab=lab, sex="female", age_years=5).percent["neutrophil"] == (20, 50)
    # Age unknown: only a range for every age applies, never a child's.
    assert pick(lab=lab, sex="", age_years=None).percent["neutrophil"] == (40.0, 75.0)
    with pytest.raises(ServiceError, match="age band"):
        services.set_reference_range(
            actor=admin,
            lab=lab,
            label="neutrophil",
            low_percent=1,
            high_percent=2,
            age_from_years=12,
            age_to_years=12,
        )


def test_the_report_uses_the_patients_sex_and_age_for_its_ranges(setting, people) -> None:
    services.set_reference_range(
        actor=people[Role.ADMIN],
        lab=setting.batch.case.lab,
        label="neutrophil",
        low_percent=45,
        high_percent=60,
        sex="female",
        age_from_years=18,
    )
    report = services.refresh_preliminary_report(batch=setting.batch)
    assert report is not None
    neutrophil = next(row for row in report.differential if row["label"] == "neutrophil")
    assert (neutrophil["low"], neutrophil["high"], neutrophil["flag"]) == (45, 60, "H")


def test_ages_are_years_from_two_then_months_then_days() -> None:
    assert age_on(date(1961, 4, 12), date(2026, 4, 11)) == "64 years"
    assert age_on(date(1961, 4, 12), date(2026, 4, 12)) == "65 years"
    assert age_on(date(2025, 3, 20), date(2026, 1, 5)) == "9 months"
    assert age_on(date(2025, 12, 24), date(2026, 1, 5)) == "12 days"


# --- the header: live while preliminary, frozen by the signature ------------------------------


def test_signing_freezes_what_the_report_says_of_the_lab_patient_and_signer(
    setting, people
) -> None:
    preliminary = header_of(setting)
    assert (preliminary.signer, preliminary.issued_at) == ("", None)
    signed = services.sign_report(actor=people[Role.PATHOLOGIST], report=setting)
    update_lab_details(
        admin=people[Role.ADMIN],
        lab=signed.batch.case.lab,
        address="Somewhere else",
        accreditation="",
        director="",
    )
    header = header_of(signed)
    assert header.lab_address == "1 Infirmary Road\nOxford OX3 9DU"
    assert header.signer == "Ada Lovelace, Consultant haematologist"
    assert header.issued_at == signed.signed_at
    assert (header.patient_name, header.birth_date, header.sex_display) == (
        "DOE, Jane",
        date(1961, 4, 12),
        "Female",
    )
    assert header.identifiers == "Patient MRN-1 · DOE, Jane · born 1961-04-12"
    assert header.has_two_identifiers


def test_an_amendment_says_what_changed_and_when_the_replaced_version_was_issued(
    setting, people
) -> None:
    pathologist = people[Role.PATHOLOGIST]
    signed = services.sign_report(actor=pathologist, report=setting, wbc_count=Decimal("11.3"))
    review_cells(
        actor=pathologist,
        cells=Cell.objects.filter(image__batch=signed.batch, predictions__label="neutrophil")[:2],
        label="monocyte",
    )
    amended = services.amend_report(
        actor=pathologist, report=signed, reason="Two monocytes", wbc_count=Decimal("10.0")
    )
    amendment = amendment_of(amended)
    assert amendment is not None
    assert amendment_of(signed) is None
    assert (amendment.replaced_version, amendment.replaced_issued_at) == (1, signed.signed_at)
    changes = {change.what: (change.before, change.after) for change in amendment.changes}
    assert changes == {
        "neutrophil": ("62 (62.0%)", "60 (60.0%)"),
        "monocyte": ("8 (8.0%)", "10 (10.0%)"),
        "WBC count (x10^9/L)": ("11.30", "10.00"),
    }


# --- the PDF --------------------------------------------------------------------------------


def test_every_pdf_page_has_two_identifiers_and_page_x_of_y_and_the_last_ends_the_report(
    setting, people
) -> None:
    signed = services.sign_report(
        actor=people[Role.PATHOLOGIST],
        report=setting,
        comment="\n".join(f"Line {n} of a long comment." for n in range(70)),
        wbc_count=Decimal("11.3"),
    )
    pages = _pages(render_report_pdf(report=signed))
    assert len(pages) >= 2
    header = header_of(signed)
    assert header.collected_at is not None
    assert header.issued_at is not None
    collected = timezone.localtime(header.collected_at).strftime("%Y-%m-%d %H:%M %Z")
    issued = timezone.localtime(header.issued_at).strftime("%Y-%m-%d %H:%M %Z")
    for number, text in enumerate(pages, start=1):
        assert "Patient MRN-1 · DOE, Jane · born 1961-04-12" in text
        assert f"page {number} of {len(pages)}" in text
        assert f"Specimen H-1 · collected {collected} · issued {issued}" in text
    first, last = pages[0], pages[-1]
    for text in [
        "1 Infirmary Road, Oxford OX3 9DU",
        "Accreditation no. UKAS 8123",
        "Laboratory director: Dr Grace Hopper",
        "Female",
        "Venous blood, EDTA",
        "Ward 7",
        "Ada Lovelace, Consultant",
        "corrected for NRBC 10.76",
    ]:
        assert text in first, text
    assert "End of report" in last
    assert "End of report" not in first
    assert "WBC corrected for NRBC = WBC x 100 / (100 + NRBC per 100 WBC)" in " ".join(pages)


def test_a_preliminary_pdf_says_plainly_it_is_not_verified_and_never_that_it_was(
    setting,
) -> None:
    text = " ".join(_pages(render_report_pdf(report=setting)))
    assert "PRELIMINARY" in text
    assert " ".join(wording.decision_support(setting).split()) in text
    assert "have not yet been verified by a qualified person" in text
    assert "verified by a qualified person before this report was signed" not in text


def test_a_pdf_with_the_identifier_alone_warns_that_a_second_one_is_missing(
    lab_case, model_version
) -> None:
    batch = classified_batch(
        case=lab_case, model_version=model_version, predictions=[("neutrophil", 0.9)]
    )
    text = " ".join(_pages(render_report_pdf(report=batch.reports.get())))
    assert "Only one patient identifier is on record" in text


# --- the page and the API ---------------------------------------------------------------------


def test_the_report_page_shows_the_content_and_the_amendment(setting, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    client = Client()
    client.force_login(pathologist)
    page = client.get(reverse("reports:report", args=[setting.pk])).content.decode()
    assert NOT_VERIFIED_SUPPORT in page
    assert "not issued (preliminary)" in page
    signed = services.sign_report(actor=pathologist, report=setting, wbc_count=Decimal("11.3"))
    review_cells(
        actor=pathologist,
        cells=Cell.objects.filter(image__batch=signed.batch, predictions__label="neutrophil")[:1],
        label="monocyte",
    )
    amended = services.amend_report(actor=pathologist, report=signed, reason="One monocyte")
    page = client.get(reverse("reports:report", args=[amended.pk])).content.decode()
    for text in [
        "Accreditation no. UKAS 8123",
        "DOE, Jane",
        "1961-04-12 (age",
        "Venous blood, EDTA",
        "Ward 7",
        "Ada Lovelace, Consultant haematologist",
        "corrected for NRBC 10.76",
        'id="amendment"',
        "62 (62.0%)",
        "61 (61.0%)",
        "End of report",
    ]:
        assert text in page, text
    assert NOT_VERIFIED_SUPPORT not in page


def test_the_report_json_carries_the_header_the_amendment_and_absolute_ranges(
    setting, people
) -> None:
    pathologist = people[Role.PATHOLOGIST]
    signed = services.sign_report(actor=pathologist, report=setting, wbc_count=Decimal("11.3"))
    review_cells(
        actor=pathologist,
        cells=Cell.objects.filter(image__batch=signed.batch, predictions__label="neutrophil")[:1],
        label="monocyte",
    )
    services.amend_report(actor=pathologist, report=signed, reason="One monocyte")
    lab = signed.batch.case.lab
    api = bearer(tokens.issue_token(lab=lab, username="lis").plaintext)
    body = api.get(reverse("api:batch_report", args=[signed.batch_id])).json()
    header = body["header"]
    assert (header["patient_id"], header["family_name"], header["birth_date"]) == (
        "MRN-1",
        "Doe",
        "1961-04-12",
    )
    assert (header["specimen_type"], header["requester"], header["sex"]) == (
        "Venous blood, EDTA",
        "Ward 7",
        "female",
    )
    assert header["signer"] == "Ada Lovelace, Consultant haematologist"
    assert body["corrected_wbc_count"] == "10.76"
    assert body["amendment"]["replaced_version"] == 1
    assert {"what": "neutrophil", "before": "62 (62.0%)", "after": "61 (61.0%)"} in body[
        "amendment"
    ]["changes"]
    neutrophil = next(row for row in body["differential"] if row["label"] == "neutrophil")
    assert (neutrophil["absolute_low"], neutrophil["absolute_high"]) == (2.0, 7.0)


def test_the_fhir_bundle_names_the_patient_and_the_specimen_and_stays_valid(setting) -> None:
    from webportal.reports import fhir

    bundle = fhir.report_bundle(report=setting)
    (patient,) = fhir.resources_of(bundle, "Patient")
    assert patient["identifier"][0]["value"] == "MRN-1"
    assert (patient["birthDate"], patient["gender"]) == ("1961-04-12", "female")
    assert patient["name"][0]["given"] == ["Jane"]
    (specimen,) = fhir.resources_of(bundle, "Specimen")
    assert specimen["accessionIdentifier"]["value"] == setting.batch.case.accession_number
