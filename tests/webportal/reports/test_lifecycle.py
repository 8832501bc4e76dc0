"""Report lifecycle: preliminary -> final (signed, frozen) -> amended (versioned), per role."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied

from tests.factories import allow_small_counts, classified_batch
from webportal.accounts.models import Role
from webportal.audit.models import AuditEvent
from webportal.cases.models import Cell
from webportal.cases.services import ServiceError
from webportal.reports import services
from webportal.reports.models import ReferenceRange, Report
from webportal.reports.reviews import review_cells


@pytest.fixture
def batch(lab_case, model_version):
    allow_small_counts(lab_case.lab)  # ten cells: the minimum has its own tests
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.9)] * 6 + [("lymphocyte", 0.8)] * 3 + [("ig", 0.2)],
    )


def _unidentified_cells(batch):
    return Cell.objects.filter(image__batch=batch, predictions__confidence__lt=0.5)


def _resolve(batch, actor) -> None:
    review_cells(actor=actor, cells=_unidentified_cells(batch), label="monocyte")


def test_the_preliminary_report_is_recounted_as_reviews_come_in(batch, people) -> None:
    report = batch.reports.get()
    counts = {row["label"]: row["count"] for row in report.differential}
    assert (counts["unidentified"], counts["monocyte"]) == (1, 0)
    _resolve(batch, people[Role.STAFF])
    report.refresh_from_db()
    counts = {row["label"]: row["count"] for row in report.differential}
    assert (counts["unidentified"], counts["monocyte"]) == (0, 1)
    assert report.status == Report.Status.PRELIMINARY


def test_signing_is_refused_while_a_counted_cell_is_unidentified(batch, people) -> None:
    report = batch.reports.get()
    with pytest.raises(ServiceError, match="1 counted cell is still unidentified"):
        services.sign_report(actor=people[Role.PATHOLOGIST], report=report)
    report.refresh_from_db()
    assert report.status == Report.Status.PRELIMINARY
    assert not AuditEvent.objects.filter(action="report.signed").exists()


@pytest.mark.parametrize("role", [Role.STAFF, Role.ADMIN, Role.INTEGRATOR])
def test_only_a_pathologist_may_sign(batch, people, role) -> None:
    _resolve(batch, people[Role.PATHOLOGIST])
    with pytest.raises(PermissionDenied):
        services.sign_report(actor=people[role], report=batch.reports.get())


def test_a_signed_report_is_frozen_while_reviews_go_on(batch, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    _resolve(batch, pathologist)
    report = services.sign_report(
        actor=pathologist,
        report=batch.reports.get(),
        comment="Mild neutrophilia.",
        morphology="Toxic granulation.",
        wbc_count=Decimal("8.2"),
    )
    assert report.status == Report.Status.FINAL
    assert report.signed_by == pathologist
    assert report.signed_at is not None
    frozen = report.differential
    assert {row["label"]: row["absolute"] for row in frozen}["neutrophil"] == 4.92  # 8.2 * 6/10
    review_cells(actor=pathologist, cells=Cell.objects.filter(image__batch=batch), label="ig")
    report.refresh_from_db()
    assert report.differential == frozen
    with pytest.raises(ServiceError, match="already signed"):
        services.sign_report(actor=pathologist, report=report)
    with pytest.raises(ServiceError, match="only a pathologist"):
        review_cells(actor=people[Role.STAFF], cells=_unidentified_cells(batch), label="ig")


def test_an_amendment_is_a_new_version_and_the_old_one_stays_readable(batch, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    _resolve(batch, pathologist)
    first = services.sign_report(actor=pathologist, report=batch.reports.get(), comment="v1")
    review_cells(actor=pathologist, cells=_unidentified_cells(batch), label="ig")
    with pytest.raises(ServiceError, match="reason"):
        services.amend_report(actor=pathologist, report=first, reason="  ")
    second = services.amend_report(
        actor=pathologist, report=first, reason="Monocyte was an immature granulocyte."
    )
    first.refresh_from_db()
    assert (second.version, second.status) == (2, Report.Status.AMENDED)
    assert second.comment == "v1"  # carried over
    assert first.superseded_by == second
    assert first.status_label == "superseded"
    assert {row["label"]: row["count"] for row in first.differential}["monocyte"] == 1
    assert {row["label"]: row["count"] for row in second.differential}["ig"] == 1
    assert any(flag["code"] == "immature" for flag in second.flags)
    with pytest.raises(ServiceError, match="superseded"):
        services.amend_report(actor=pathologist, report=first, reason="again")
    event = AuditEvent.objects.get(action="report.amended")
    before, after = event.before or {}, event.after or {}
    assert before["version"] == 1
    assert after["version"] == 2
    assert after["reason"] == "Monocyte was an immature granulocyte."


@pytest.mark.parametrize("role", [Role.STAFF, Role.ADMIN, Role.INTEGRATOR])
def test_only_a_pathologist_may_amend(batch, people, role) -> None:
    _resolve(batch, people[Role.PATHOLOGIST])
    signed = services.sign_report(actor=people[Role.PATHOLOGIST], report=batch.reports.get())
    with pytest.raises(PermissionDenied):
        services.amend_report(actor=people[role], report=signed, reason="x")


def test_a_preliminary_report_cannot_be_amended(batch, people) -> None:
    with pytest.raises(ServiceError, match="Only a signed report"):
        services.amend_report(
            actor=people[Role.PATHOLOGIST], report=batch.reports.get(), reason="x"
        )


def test_staff_may_edit_remarks_of_a_preliminary_report_and_it_is_audited(batch, people):
    report = services.update_preliminary_report(
        actor=people[Role.STAFF],
        report=batch.reports.get(),
        comment="Smear slightly thick.",
        morphology="",
        wbc_count=Decimal("4.5"),
    )
    assert {row["label"]: row["absolute"] for row in report.differential}["lymphocyte"] == 1.5
    event = AuditEvent.objects.get(action="report.edited")
    before, after = event.before or {}, event.after or {}
    assert (before["wbc_count"], after["wbc_count"]) == (None, "4.50")
    with pytest.raises(ServiceError, match="WBC count"):
        services.update_preliminary_report(
            actor=people[Role.STAFF], report=report, comment="", morphology="",
            wbc_count=Decimal("0"),
        )  # fmt: skip


def test_signing_and_downloads_are_audited(batch, people) -> None:
    pathologist = people[Role.PATHOLOGIST]
    _resolve(batch, pathologist)
    report = services.sign_report(actor=pathologist, report=batch.reports.get())
    services.record_report_download(actor=pathologist, report=report)
    signed = AuditEvent.objects.get(action="report.signed")
    before, after = signed.before or {}, signed.after or {}
    assert (before["status"], after["status"]) == ("preliminary", "final")
    download = AuditEvent.objects.get(action="report.downloaded")
    assert download.object_id == str(report.pk)


def test_lab_admins_set_reference_ranges_and_others_may_not(lab, people, batch) -> None:
    with pytest.raises(PermissionDenied):
        services.set_reference_range(
            actor=people[Role.PATHOLOGIST], lab=lab, label="neutrophil", low_percent=40,
            high_percent=90,
        )  # fmt: skip
    services.set_reference_range(
        actor=people[Role.ADMIN], lab=lab, label="Neutrophil", low_percent=40, high_percent=90
    )
    assert ReferenceRange.objects.get(lab=lab).label == "neutrophil"
    assert services.reference_ranges_for(lab=lab)["neutrophil"] == (40, 90)
    assert AuditEvent.objects.filter(action="reference_range.changed").count() == 1
    with pytest.raises(ServiceError):
        services.set_reference_range(
            actor=people[Role.ADMIN], lab=lab, label="neutrophil", low_percent=50,
            high_percent=10,
        )  # fmt: skip
