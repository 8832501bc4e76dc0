"""What a report says besides its numbers (ISO 15189:2022, 7.4.1.6): the lab that issues it,
the patient (two identifiers, sex, age), the specimen, the requester, the signer and the time of
issue; and what an amendment changed. The page (reports/views.py) and the PDF (reports/pdf.py)
both read it from here, so they say the same.

While a report is preliminary its header follows the records; signing freezes it into
Report.header, so a signed report keeps saying what it said when it was issued (a later change
of the lab's address or of the signer's title reaches new reports, and amendments).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from webportal.accounts.models import person_line
from webportal.cases.models import Case, Patient
from webportal.reports.models import Report

NOT_VERIFIED_SUPPORT = (
    "Decision support: the cell classes were proposed by an automated classifier and have not "
    "yet been verified by a qualified person. This preliminary report is not for clinical use."
)
END_OF_REPORT = "End of report"


@dataclass(frozen=True)
class ReportHeader:
    lab_name: str
    lab_address: str
    lab_accreditation: str
    lab_director: str
    patient_id: str
    family_name: str
    given_name: str
    birth_date: date | None
    sex: str  # Patient.Sex value or ""
    age: str  # at collection, "52 years", "" when the birth date is unknown
    specimen_id: str  # the accession number
    specimen_type: str
    collected_at: datetime | None
    received_at: datetime | None
    requester: str
    signer: str  # "Ada Lovelace, Consultant haematologist"; "" while preliminary
    issued_at: datetime | None  # the signature; None while preliminary

    @property
    def patient_name(self) -> str:
        return ", ".join(part for part in (self.family_name.upper(), self.given_name) if part)

    @property
    def sex_display(self) -> str:
        return str(Patient.Sex(self.sex).label) if self.sex in Patient.Sex.values else ""

    @property
    def identifiers(self) -> str:
        """The two identifiers every page carries: the patient id and the name and/or birth
        date; fewer when the case lacks them (the report then says so)."""
        parts = [f"Patient {self.patient_id or '(no id)'}"]
        if self.patient_name:
            parts.append(self.patient_name)
        if self.birth_date is not None:
            parts.append(f"born {self.birth_date.isoformat()}")
        return " · ".join(parts)

    @property
    def has_two_identifiers(self) -> bool:
        return bool(self.patient_id) and bool(self.patient_name or self.birth_date)

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        for name, value in values.items():
            if isinstance(value, date | datetime):
                values[name] = value.isoformat()
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ReportHeader:
        known = {item.name for item in fields(cls)}
        data: dict[str, Any] = {name: values.get(name, "") for name in known}
        data["birth_date"] = parse_date(values["birth_date"]) if values.get("birth_date") else None
        for name in ("collected_at", "received_at", "issued_at"):
            data[name] = parse_datetime(values[name]) if values.get(name) else None
        return cls(**data)


def age_on(birth_date: date, on: date) -> str:
    """Age in whole years from 2 years on; months, then days, below (neonates and infants)."""
    years = on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))
    if years >= 2:
        return f"{years} years"
    months = (on.year - birth_date.year) * 12 + on.month - birth_date.month
    if on.day < birth_date.day:
        months -= 1
    if months >= 1:
        return f"{months} month{'s' if months != 1 else ''}"
    days = (on - birth_date).days
    return f"{days} day{'s' if days != 1 else ''}"


def _age_date(case: Case) -> date:
    """Age is counted at collection; when that is unknown, on the day the case was made."""
    moment = case.specimen_collected_at or case.created_at or timezone.now()
    return timezone.localtime(moment).date()


def patient_band(case: Case) -> dict[str, Any]:
    """The patient's sex and age in whole years, for choosing reference intervals."""
    patient = case.patient
    if patient is None:
        return {"sex": "", "age_years": None}
    age_years = None
    if patient.birth_date is not None:
        on = _age_date(case)
        born = patient.birth_date
        age_years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    return {"sex": patient.sex, "age_years": age_years}


def _signer(report: Report) -> str:
    """Read afresh: the name and title on record now, not those of a User object in memory."""
    if report.signed_by_id is None:
        return ""
    return person_line(User.objects.select_related("profile").get(pk=report.signed_by_id))


def live_header(report: Report) -> ReportHeader:
    """The header from the records as they are now."""
    case = report.batch.case
    lab = case.lab
    patient = case.patient
    birth_date = patient.birth_date if patient else None
    return ReportHeader(
        lab_name=lab.name,
        lab_address=lab.address,
        lab_accreditation=lab.accreditation,
        lab_director=lab.director,
        patient_id=patient.external_id if patient else "",
        family_name=patient.family_name if patient else "",
        given_name=patient.given_name if patient else "",
        birth_date=birth_date,
        sex=patient.sex if patient else "",
        age=age_on(birth_date, _age_date(case)) if birth_date else "",
        specimen_id=case.accession_number,
        specimen_type=case.specimen_type,
        collected_at=case.specimen_collected_at,
        received_at=case.specimen_received_at,
        requester=case.requester,
        signer=_signer(report),
        issued_at=report.signed_at,
    )


def freeze_header(report: Report) -> dict[str, Any]:
    """What Report.header keeps at signing: the header as the records say now."""
    return live_header(report).to_json()


def header_of(report: Report) -> ReportHeader:
    """The frozen header of a signed report, else the live one."""
    if report.header:
        return ReportHeader.from_json(report.header)
    return live_header(report)


# --- amendments -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    what: str  # a class, or "WBC count", "comment", "morphology"
    before: str
    after: str


@dataclass(frozen=True)
class Amendment:
    replaced_version: int
    replaced_issued_at: datetime | None
    replaced_signer: str
    changes: list[Change]


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row.get("percent") is None:
        return str(row["count"])
    unit = "%" if row.get("group") == "wbc" else " per 100 WBC"
    return f"{row['count']} ({row['percent']:.1f}{unit})"


def amendment_of(report: Report) -> Amendment | None:
    """What an amended report changed against the version it replaced: each class whose count
    or share moved (before -> after), the WBC count and the remarks; None for a first version."""
    replaced = Report.objects.filter(superseded_by=report).select_related("signed_by").first()
    if replaced is None:
        return None
    before = {row["label"]: row for row in replaced.differential}
    after = {row["label"]: row for row in report.differential}
    changes: list[Change] = []
    for label in dict.fromkeys([*after, *before]):
        old, new = before.get(label), after.get(label)
        if _cell(old) != _cell(new):
            changes.append(Change(label, _cell(old), _cell(new)))
    if replaced.wbc_count != report.wbc_count:
        changes.append(
            Change(
                "WBC count (x10^9/L)",
                "-" if replaced.wbc_count is None else str(replaced.wbc_count),
                "-" if report.wbc_count is None else str(report.wbc_count),
            )
        )
    for name in ("comment", "morphology"):
        old_text, new_text = getattr(replaced, name), getattr(report, name)
        if old_text != new_text:
            changes.append(Change(name, old_text or "-", new_text or "-"))
    replaced_header = header_of(replaced)
    return Amendment(
        replaced_version=replaced.version,
        replaced_issued_at=replaced.signed_at,
        replaced_signer=replaced_header.signer or person_line(replaced.signed_by),
        changes=changes,
    )
