"""Reviews: who may review, what a review changes (and what it never touches), bulk in one go."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import CaseFactory, MembershipFactory, classified_batch
from webportal.accounts.models import Role
from webportal.audit.models import AuditEvent
from webportal.cases.models import Batch, Cell, Prediction, Review
from webportal.cases.services import ServiceError
from webportal.reports.differential import NOT_CLASSED, UNIDENTIFIED
from webportal.reports.reviews import batch_cells, current_counts, review_cells


@pytest.fixture
def batch(lab_case, model_version):
    return classified_batch(
        case=lab_case,
        model_version=model_version,
        predictions=[("neutrophil", 0.9), ("lymphocyte", 0.95), ("monocyte", 0.3)],
    )


def _cells(batch):
    return list(Cell.objects.filter(image__batch=batch).order_by("pk"))


def test_a_cell_under_the_threshold_is_unidentified_until_reviewed(batch, people) -> None:
    states = batch_cells(batch=batch)
    assert [state.current for state in states] == ["neutrophil", "lymphocyte", UNIDENTIFIED]
    assert states[2].predicted == "monocyte"
    review_cells(actor=people[Role.STAFF], cells=[_cells(batch)[2]], label="Monocyte")
    assert batch_cells(batch=batch)[2].current == "monocyte"


def test_the_latest_review_wins_and_the_prediction_is_never_changed(batch, people) -> None:
    cell = _cells(batch)[0]
    before = list(Prediction.objects.filter(cell=cell).values())
    review_cells(actor=people[Role.STAFF], cells=[cell], label="eosinophil")
    review_cells(actor=people[Role.PATHOLOGIST], cells=[cell], label="basophil")
    assert batch_cells(batch=batch)[0].current == "basophil"
    assert list(Prediction.objects.filter(cell=cell).values()) == before
    assert list(Review.objects.filter(cell=cell).values_list("label", flat=True)) == [
        "eosinophil",
        "basophil",
    ]


def test_not_classed_cells_leave_the_counts(batch, people) -> None:
    review_cells(actor=people[Role.STAFF], cells=_cells(batch)[:1], label=NOT_CLASSED)
    counts = current_counts(batch=batch)
    assert counts[NOT_CLASSED] == 1
    report = batch.reports.get()
    rows = {row["label"]: row for row in report.differential}
    assert rows["neutrophil"]["count"] == 0
    assert rows[NOT_CLASSED]["count"] == 1
    assert report.wbc_cells == 1  # the lymphocyte; the unidentified monocyte is apart


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.STAFF, True),
        (Role.PATHOLOGIST, True),
        (Role.ADMIN, False),
        (Role.INTEGRATOR, False),  # a machine never reviews, through the API neither
    ],
)
def test_each_role_may_review_in_the_portal_or_not(batch, people, role, allowed) -> None:
    cells = _cells(batch)[:2]
    if allowed:
        reviews = review_cells(actor=people[role], cells=cells, label="monocyte")
        assert {review.reviewer_role for review in reviews} == {role}
    else:
        with pytest.raises(PermissionDenied):
            review_cells(actor=people[role], cells=cells, label="monocyte")
        assert not Review.objects.exists()


def test_an_integrator_may_not_review_through_the_api_either(batch, people) -> None:
    with pytest.raises(PermissionDenied, match="service \\(integrator\\) token may not"):
        review_cells(
            actor=people[Role.INTEGRATOR], cells=_cells(batch)[:1], label="monocyte", via_api=True
        )
    assert not Review.objects.exists()


def test_a_user_of_another_lab_may_not_review(batch) -> None:
    stranger = MembershipFactory.create(role=Role.PATHOLOGIST).user
    with pytest.raises(PermissionDenied):
        review_cells(actor=stranger, cells=_cells(batch), label="monocyte")


def test_a_technologist_may_not_overrule_a_pathologist(batch, people) -> None:
    cells = _cells(batch)
    review_cells(actor=people[Role.PATHOLOGIST], cells=cells[:1], label="monocyte")
    with pytest.raises(ServiceError, match="reviewed by a pathologist"):
        review_cells(actor=people[Role.STAFF], cells=cells, label="lymphocyte")
    assert Review.objects.count() == 1  # nothing of the refused bulk action was written


def test_cells_of_two_batches_or_an_unknown_label_are_refused(batch, people, lab, model_version):
    other = classified_batch(
        case=CaseFactory.create(lab=lab), model_version=model_version,
        predictions=[("neutrophil", 0.9)],
    )  # fmt: skip
    with pytest.raises(ServiceError, match="one batch"):
        review_cells(
            actor=people[Role.STAFF], cells=_cells(batch) + _cells(other), label="monocyte"
        )
    with pytest.raises(ServiceError, match="not in the lab's cell vocabulary"):
        review_cells(actor=people[Role.STAFF], cells=_cells(batch), label="unicorn")


def test_a_batch_still_processing_cannot_be_reviewed(batch, people) -> None:
    Batch.objects.filter(pk=batch.pk).update(status=Batch.Status.PROCESSING)
    with pytest.raises(ServiceError, match="once it is done"):
        review_cells(actor=people[Role.STAFF], cells=_cells(batch), label="monocyte")


def test_every_review_is_audited_with_before_and_after(batch, people) -> None:
    cells = _cells(batch)
    review_cells(actor=people[Role.STAFF], cells=cells, label="lymphocyte")
    events = AuditEvent.objects.filter(action="cell.reviewed").order_by("object_id")
    assert [(e.object_type, e.object_id) for e in events] == [
        ("cases.cell", str(cell.pk)) for cell in cells
    ]
    assert [e.before for e in events] == [
        {"label": "neutrophil"}, {"label": "lymphocyte"}, {"label": UNIDENTIFIED},
    ]  # fmt: skip
    assert {e.actor_id for e in events} == {people[Role.STAFF].pk}
    assert all(e.after == {"label": "lymphocyte"} for e in events)


def test_a_bulk_review_is_a_fixed_number_of_queries_whatever_its_size(
    lab_case, model_version, people
) -> None:
    def queries_for(n: int) -> int:
        batch = classified_batch(
            case=CaseFactory.create(lab=lab_case.lab),
            model_version=model_version,
            predictions=[("neutrophil", 0.9)] * n,
        )
        cells = _cells(batch)
        with CaptureQueriesContext(connection) as captured:
            review_cells(actor=people[Role.PATHOLOGIST], cells=cells, label="monocyte")
        return len(captured.captured_queries)

    assert queries_for(3) == queries_for(60)
