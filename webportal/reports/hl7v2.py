"""A report as an HL7 v2.5.1 ORU^R01 message (unsolicited transmission of an observation).

Built with hl7apy against the v2.5.1 message structure (strict validation), never by joining
strings: every free text goes through hl7apy's escaping, so a "|" or "^" in a comment or a name
cannot break a field. The layout follows HL7 v2.5.1 chapter 7 (Observation Reporting):

    MSH  sending HEMATOVISION^<lab>, ORU^R01^ORU_R01, processing P, version 2.5.1
    PID  PID-3 the patient identifier (MR) and the accession as a second, PID-5 name,
         PID-7 birth date, PID-8 sex (table 0001)
    ORC  RE (observations to follow), ORC-3 filler order number = the accession number
    OBR  OBR-3 the accession, OBR-4 LOINC 24318-8, OBR-7 collected, OBR-14 received,
         OBR-22 issued, OBR-25 result status (table 0123: P, F, C), OBR-32 who signed
    NTE  the comment, the morphology remarks, the amendment reason, the conclusion
    OBX  one per result: NM, LOINC code (or the lab's local code), value, UCUM unit, reference
         range, abnormal flags (table 0078: H, L, and AA for a critical result), status
    SPM  specimen type, collected and received
"""

from __future__ import annotations

from datetime import date, datetime

from django.utils import timezone
from hl7apy.core import Message, Segment
from hl7apy.v2_5_1 import FT

from webportal.reports.models import Report
from webportal.reports.results import PANEL, Result, ResultDocument

CONTENT_TYPE = "application/hl7-v2"
VERSION = "2.5.1"
SENDING_APPLICATION = "HEMATOVISION"
# HL7 table 0001 (administrative sex).
SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


def control_id_of(*, report: Report) -> str:
    """MSH-10 of a report version's message as the API serves it: the same version gives the
    same id, so a receiver can tell a repeat from a new message."""
    return f"HV-{report.batch_id}-{report.version}"


def escaped(text: str) -> str:
    """`text` as ER7 data, HL7's escape sequences in place of its delimiters (\\F\\, \\S\\ ...)."""
    one_line = " ".join(text.split())  # a field is one line: segments end at a carriage return
    return str(FT(one_line).to_er7())


def _ts(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return timezone.localtime(moment).strftime("%Y%m%d%H%M%S%z")


def _dt(day: date | None) -> str:
    return "" if day is None else day.strftime("%Y%m%d")


def _number(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"


def _range(result: Result) -> str:
    if result.low is None and result.high is None:
        return ""
    low = "" if result.low is None else _number(result.low)
    high = "" if result.high is None else _number(result.high)
    return f"{low}-{high}"


def _abnormal_flags(result: Result) -> list[str]:
    flags = [result.flag] if result.flag in {"H", "L"} else []
    if result.critical:
        flags.append("AA")  # table 0078: critically abnormal
    return flags


def _code(result: Result, lab_slug: str) -> str:
    if result.loinc is not None:
        code, name = result.loinc
        return f"{code}^{escaped(name)}^LN"
    return f"{escaped(result.id)}^{escaped(result.text)}^L^^^{escaped(lab_slug)}"


def _nte(parent: Segment | Message, set_id: int, text: str, kind: str) -> None:
    nte = parent.add_segment("NTE")
    nte.nte_1 = str(set_id)
    nte.nte_2 = "L"  # source: the filler (the lab)
    nte.nte_3 = escaped(text)
    nte.nte_4 = kind  # table 0364: RE remark, 1R primary reason, DR ...


def oru_r01(
    *,
    document: ResultDocument,
    control_id: str,
    receiving_application: str = "",
    receiving_facility: str = "",
    sent_at: datetime | None = None,
) -> str:
    """The ORU^R01 message (ER7, segments ended by carriage returns) for `document`."""
    message = Message("ORU_R01", version=VERSION, validation_level=1)
    msh = message.msh
    msh.msh_3 = SENDING_APPLICATION
    msh.msh_4 = escaped(document.lab_slug)
    if receiving_application:
        msh.msh_5 = escaped(receiving_application)
    if receiving_facility:
        msh.msh_6 = escaped(receiving_facility)
    msh.msh_7 = _ts(sent_at or timezone.now())
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = escaped(control_id)
    msh.msh_11 = "P"
    msh.msh_15 = "AL"  # accept acknowledgement: always (the MLLP sender waits for it)
    msh.msh_16 = "NE"

    result_group = message.add_group("ORU_R01_PATIENT_RESULT")
    patient_group = result_group.add_group("ORU_R01_PATIENT")
    pid = patient_group.pid
    pid.pid_1 = "1"
    patient = document.patient
    identifiers = []
    if patient is not None:
        identifiers.append((patient.identifier, "MR"))
    identifiers.append((document.accession_number, "AN"))
    for value, kind in identifiers:
        cx = pid.add_field("pid_3")
        cx.cx_1 = escaped(value)
        cx.cx_4 = escaped(document.lab_slug)
        cx.cx_5 = kind
    if patient is not None and (patient.family_name or patient.given_name):
        pid.pid_5.xpn_1 = escaped(patient.family_name)
        pid.pid_5.xpn_2 = escaped(patient.given_name)
        pid.pid_5.xpn_7 = "L"  # table 0200: legal name
    else:
        pid.pid_5.xpn_7 = "U"  # PID-5 is required: a name of type "unspecified", no parts
    if patient is not None and patient.birth_date is not None:
        pid.pid_7 = _dt(patient.birth_date)
    if patient is not None and patient.sex:
        pid.pid_8 = SEX.get(patient.sex, "U")

    order = result_group.add_group("ORU_R01_ORDER_OBSERVATION")
    orc = order.orc
    orc.orc_1 = "RE"
    orc.orc_3 = f"{escaped(document.accession_number)}^{SENDING_APPLICATION}"
    if document.requester:
        orc.orc_12 = f"^{escaped(document.requester)}"
    obr = order.obr
    obr.obr_1 = "1"
    obr.obr_3 = f"{escaped(document.accession_number)}^{SENDING_APPLICATION}"
    obr.obr_4 = f"{PANEL[0]}^{escaped(PANEL[1])}^LN"
    obr.obr_7 = _ts(document.effective)
    if document.specimen.received_at is not None:
        obr.obr_14 = _ts(document.specimen.received_at)
    if document.requester:
        obr.obr_16 = f"^{escaped(document.requester)}"
    obr.obr_22 = _ts(document.issued)
    obr.obr_24 = "HM"  # diagnostic service section (table 0074): haematology
    obr.obr_25 = document.result_status
    if document.signer is not None:
        obr.obr_32 = f"{escaped(document.signer.username)}&{escaped(document.signer.name)}"

    notes = [
        (document.comment, "RE"),
        (f"Morphology: {document.morphology}" if document.morphology else "", "RE"),
        (
            f"Amended (replaces version {document.replaces_version}): {document.amendment_reason}"
            if document.status == "amended"
            else "",
            "RE",
        ),
        (document.conclusion, "RE"),
    ]
    for set_id, (text, kind) in enumerate((n for n in notes if n[0]), start=1):
        _nte(order, set_id, text, kind)

    for set_id, result in enumerate(document.results, start=1):
        observation = order.add_group("ORU_R01_OBSERVATION")
        obx = observation.obx
        obx.obx_1 = str(set_id)
        obx.obx_2 = "NM"
        obx.obx_3 = _code(result, document.lab_slug)
        obx.obx_5 = _number(result.value)
        # The UCUM code is its own text: "10^9/L" would need HL7's escape for "^".
        obx.obx_6 = f"{escaped(result.unit)}^{escaped(result.unit)}^UCUM"
        if reference := _range(result):
            obx.obx_7 = reference
        for flag in _abnormal_flags(result):
            obx.add_field("obx_8").value = flag
        obx.obx_11 = document.result_status
        obx.obx_14 = _ts(document.effective)
        if result.ci_low is not None and result.ci_high is not None:
            _nte(
                observation,
                1,
                f"95% confidence interval {_number(result.ci_low)}-{_number(result.ci_high)}"
                f" {result.unit_text}",
                "RE",
            )

    specimen = order.add_group("ORU_R01_SPECIMEN")
    spm = specimen.spm
    spm.spm_1 = "1"
    spm.spm_2 = f"^{escaped(document.specimen.identifier)}"
    spm.spm_4 = f"^{escaped(document.specimen.type or 'Peripheral blood smear')}"
    if document.specimen.collected_at is not None:
        spm.spm_17 = _ts(document.specimen.collected_at)
    if document.specimen.received_at is not None:
        spm.spm_18 = _ts(document.specimen.received_at)
    message.validate()
    return str(message.to_er7())
