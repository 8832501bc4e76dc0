from __future__ import annotations

from decimal import Decimal

import pytest
from hl7apy.parser import parse_message

from tests.factories import PatientFactory, ReportFactory
from webportal.reports import hl7v2
from webportal.reports.models import Report
from webportal.reports.results import result_document

pytestmark = pytest.mark.django_db


def _parsed(text: str):
    return parse_message(text, find_groups=True, validation_level=1)


def test_a_report_is_an_oru_r01_that_parses_back_with_its_codes_units_and_status() -> None:
    report = ReportFactory.create()
    report.batch.case.patient = PatientFactory.create(lab=report.batch.case.lab, external_id="M-1")
    report.batch.case.save()
    message = _parsed(hl7v2.oru_r01(document=result_document(report=report), control_id="c-1"))
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_12.to_er7() == "2.5.1"
    group = message.oru_r01_patient_result
    identifiers = [field.to_er7() for field in group.oru_r01_patient.pid.pid_3]
    assert identifiers[0].startswith("M-1^")
    assert identifiers[0].endswith("^MR")
    order = group.oru_r01_order_observation
    assert order.obr.obr_4.to_er7().startswith("24318-8^")
    assert order.obr.obr_25.to_er7() == "P"
    assert order.orc.orc_3.to_er7().split("^")[0] == report.batch.case.accession_number
    obx = {o.obx.obx_3.to_er7().split("^")[0]: o.obx for o in order.oru_r01_observation}
    neutrophils = obx["26511-6"]
    row = next(r for r in report.differential if r["label"] == "neutrophil")
    assert float(neutrophils.obx_5.to_er7()) == pytest.approx(row["percent"])
    assert neutrophils.obx_6.to_er7() == "%^%^UCUM"
    assert neutrophils.obx_11.to_er7() == "P"


def test_a_signed_report_is_final_and_its_amendment_corrected() -> None:
    report = ReportFactory.create(status=Report.Status.FINAL)
    assert _order(report).obr.obr_25.to_er7() == "F"
    amended = ReportFactory.create(
        batch=report.batch, version=2, status=Report.Status.AMENDED, amendment_reason="relabelled"
    )
    order = _order(amended)
    assert order.obr.obr_25.to_er7() == "C"
    notes = [nte.nte_3.to_er7() for nte in order.nte]
    assert any("replaces version 1" in note and "relabelled" in note for note in notes)


def _order(report: Report):
    text = hl7v2.oru_r01(document=result_document(report=report), control_id="x")
    return _parsed(text).oru_r01_patient_result.oru_r01_order_observation


def test_delimiters_in_free_text_are_escaped_not_split_into_fields() -> None:
    report = ReportFactory.create(comment="a|b^c~d\\e&f", wbc_count=Decimal("7.50"))
    text = hl7v2.oru_r01(document=result_document(report=report), control_id="x")
    order = _parsed(text).oru_r01_patient_result.oru_r01_order_observation
    assert order.nte[0].nte_3.to_er7() == r"a\F\b\S\c\R\d\E\e\T\f"
    segments = text.split("\r")
    assert all(segment[:3].isalnum() for segment in segments if segment)
