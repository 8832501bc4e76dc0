"""Adapting a model to a lab: the plan (which reviewed cells, which are held out), the export,
starting a job, and the admin's decision."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import LazySettings
from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image as PILImage

from ml.locate import crop_cell
from tests.factories import (
    AdaptationJobFactory,
    CaseFactory,
    LabFactory,
    MembershipFactory,
    ModelVersionFactory,
    ReviewFactory,
    cell_png,
    reviewed_batch,
)
from tests.webportal.adaptation.conftest import CLASSES, PER_CASE
from webportal.accounts.models import Role
from webportal.accounts.services import AccountError, RoleRequired
from webportal.adaptation import selectors, services
from webportal.adaptation.export import export_cells
from webportal.adaptation.models import AdaptationJob
from webportal.audit.models import AuditEvent
from webportal.cases.models import Cell, Image, ModelVersion, Review
from webportal.cases.registry import activate_model, active_model_for
from webportal.cases.services import ServiceError
from webportal.celery import ADAPT_MODEL_TASK
from webportal.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(lab):
    return MembershipFactory.create(lab=lab, role=Role.ADMIN).user


@pytest.fixture
def reviewer(lab):
    return MembershipFactory.create(lab=lab, role=Role.PATHOLOGIST).user


def lab_with_cases(lab, base_model, reviewer, *, cases: int = 8, files: bool = False):
    for _ in range(cases):
        reviewed_batch(
            case=CaseFactory.create(lab=lab),
            model_version=base_model,
            labels=PER_CASE,
            reviewer=reviewer,
            with_files=files,
        )


def test_the_plan_holds_out_whole_cases_and_leaves_out_a_class_with_too_few_cells(
    lab, base_model, reviewer
) -> None:
    lab_with_cases(lab, base_model, reviewer)

    plan = selectors.adaptation_plan(lab=lab, base_model=base_model)

    assert plan.ready, plan.problem
    assert plan.group_by == "case"
    assert plan.classes == ["lymphocyte", "neutrophil"]
    # 24 of each: a quarter (6, two whole cases) held out, the rest to train on.
    assert (plan.train["lymphocyte"], plan.heldout["lymphocyte"]) == (18, 6)
    assert (plan.train["neutrophil"], plan.heldout["neutrophil"]) == (18, 6)
    assert plan.left_out == {
        "monocyte": "6 to train on and 2 held out; it needs 10 and 5",
    }
    cell_case = dict(Cell.objects.values_list("pk", "image__batch__case_id"))
    sides = {side: {cell_case[c] for c, _ in pairs} for side, pairs in plan.cells.items()}
    assert sides["train"].isdisjoint(sides["heldout"])  # no case on both sides
    assert len(sides["heldout"]) == plan.heldout_cases == 2
    assert Counter(label for _, label in plan.cells["heldout"]) == {
        "lymphocyte": 6,
        "neutrophil": 6,
    }


def test_the_split_is_the_same_every_time_and_moves_little_when_a_case_is_added(
    lab, base_model, reviewer
) -> None:
    lab_with_cases(lab, base_model, reviewer)
    first = selectors.adaptation_plan(lab=lab, base_model=base_model)
    again = selectors.adaptation_plan(lab=lab, base_model=base_model)
    assert again.cells == first.cells

    lab_with_cases(lab, base_model, reviewer, cases=1)
    later = selectors.adaptation_plan(lab=lab, base_model=base_model)
    held_before = {c for c, _ in first.cells["heldout"]}
    held_after = {c for c, _ in later.cells["heldout"]}
    assert len(held_before & held_after) >= len(held_before) // 2


def test_a_cell_counts_with_its_latest_review_and_not_classed_or_unreviewed_cells_do_not(
    lab, base_model, reviewer
) -> None:
    lab_with_cases(lab, base_model, reviewer, cases=1)
    cells = list(Cell.objects.order_by("pk"))
    # A correction after the first review wins; "not classed" leaves the cell out.
    ReviewFactory.create(cell=cells[0], reviewer=reviewer, label="monocyte")
    ReviewFactory.create(cell=cells[1], reviewer=reviewer, label=Review.NOT_CLASSED)
    Review.objects.filter(cell=cells[2]).delete()

    found, skipped = selectors.reviewed_cells(lab=lab, classes=CLASSES)

    labels = {cell.cell_id: cell.label for cell in found}
    assert labels[cells[0].pk] == "monocyte"
    assert cells[1].pk not in labels
    assert cells[2].pk not in labels
    assert skipped == {"not classed": 1}
    assert len(found) == len(PER_CASE) - 2


def test_another_labs_reviewed_cells_never_enter_the_plan(lab, base_model, reviewer) -> None:
    lab_with_cases(lab, base_model, reviewer, cases=2)
    other = LabFactory.create()
    other_reviewer = MembershipFactory.create(lab=other, role=Role.PATHOLOGIST).user
    lab_with_cases(other, base_model, other_reviewer, cases=8)

    found, _ = selectors.reviewed_cells(lab=lab, classes=CLASSES)
    plan = selectors.adaptation_plan(lab=lab, base_model=base_model)

    own = set(Cell.objects.filter(image__batch__case__lab=lab).values_list("pk", flat=True))
    assert {cell.cell_id for cell in found} == own
    assert not plan.ready  # the other lab's cells would have been plenty
    assert "Too few reviewed cells" in plan.problem
    assert "10 reviewed cells to train on and 5 held out" in plan.problem


def test_too_few_reviewed_cells_refuse_to_start_with_the_reason_and_send_nothing(
    lab, base_model, reviewer, admin, django_capture_on_commit_callbacks
) -> None:
    lab.active_model = base_model
    lab.save()
    lab_with_cases(lab, base_model, reviewer, cases=2)

    with (
        django_capture_on_commit_callbacks() as callbacks,
        pytest.raises(ServiceError, match="Too few reviewed cells to adapt"),
    ):
        services.start_adaptation(admin=admin, lab=lab)

    assert not callbacks
    assert not AdaptationJob.objects.exists()


def test_an_admin_starts_an_adaptation_sent_by_name_to_the_adapt_queue_after_commit(
    lab, base_model, reviewer, admin, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    lab.active_model = base_model
    lab.save()
    lab_with_cases(lab, base_model, reviewer)
    sent: list[tuple[str, tuple[object, ...], str]] = []
    monkeypatch.setattr(
        celery_app,
        "send_task",
        lambda name, args, queue: sent.append((name, tuple(args), queue)),
    )

    with django_capture_on_commit_callbacks(execute=True):
        job = services.start_adaptation(admin=admin, lab=lab)
        assert not sent  # nothing before the commit

    assert sent == [(ADAPT_MODEL_TASK, (job.pk,), "adapt")]
    job.refresh_from_db()
    assert job.status == AdaptationJob.Status.QUEUED
    assert job.base_model == base_model
    assert job.plan["train"] == {"lymphocyte": 18, "neutrophil": 18}
    event = AuditEvent.objects.get(action=services.ADAPTATION_STARTED)
    assert (event.actor, event.lab, event.object_id) == (admin, lab, str(job.pk))
    assert event.after is not None
    assert event.after["heldout"] == {"lymphocyte": 6, "neutrophil": 6}


def test_only_the_labs_admin_may_start_and_a_second_one_waits_for_the_first(
    lab, base_model, reviewer, admin, monkeypatch
) -> None:
    monkeypatch.setattr(services, "send_adaptation", lambda job_id: None)
    lab_with_cases(lab, base_model, reviewer)
    other_admin = MembershipFactory.create(role=Role.ADMIN).user

    for user in (reviewer, other_admin):
        with pytest.raises(RoleRequired):
            services.start_adaptation(admin=user, lab=lab)
    first = services.start_adaptation(admin=admin, lab=lab)
    with pytest.raises(ServiceError, match="already queued"):
        services.start_adaptation(admin=admin, lab=lab)

    # A running job whose worker stopped long ago is failed, and a new one may start.
    stale = timezone.now() - timedelta(hours=2)
    AdaptationJob.objects.filter(pk=first.pk).update(status="running", heartbeat_at=stale)
    second = services.start_adaptation(admin=admin, lab=lab)
    first.refresh_from_db()
    assert first.status == AdaptationJob.Status.FAILED
    assert "gave no sign of life for 30 minutes" in first.error
    assert second.pk != first.pk

    # A queued job no worker took (no worker on the adapt queue) says what to check.
    AdaptationJob.objects.filter(pk=second.pk).update(created_at=stale)
    third = services.start_adaptation(admin=admin, lab=lab)
    second.refresh_from_db()
    assert second.status == AdaptationJob.Status.FAILED
    assert "is a worker consuming the adapt queue running" in second.error
    assert third.status == AdaptationJob.Status.QUEUED


def test_the_export_writes_each_cell_as_the_classifier_sees_it_in_its_class_folder(
    lab, base_model, reviewer, tmp_path: Path
) -> None:
    lab_with_cases(lab, base_model, reviewer, cases=1, files=True)
    field = Image.objects.create(
        batch=Image.objects.first().batch,  # type: ignore[union-attr]
        original_name="field.png",
        status=Image.Status.OK,
        kind=Image.Kind.FIELD,
        width=120,
        height=100,
    )
    field.file.save("field.png", ContentFile(cell_png(0, 7, size=120)))
    boxed = Cell.objects.create(image=field, box=[30, 20, 24, 30], origin=Cell.Origin.LOCATED)
    whole = Cell.objects.filter(image__kind=Image.Kind.CELL).first()
    assert whole is not None

    written = export_cells(
        lab=lab, cells=[(whole.pk, "neutrophil"), (boxed.pk, "monocyte")], folder=tmp_path
    )

    assert written == {"neutrophil": 1, "monocyte": 1}
    with PILImage.open(tmp_path / "neutrophil" / f"{whole.pk}.png") as picture:
        assert picture.size == (40, 40)  # the whole uploaded image
    with field.file.open("rb") as handle, PILImage.open(handle) as stored:
        expected = crop_cell(stored.convert("RGB"), (30, 20, 54, 50))
    with PILImage.open(tmp_path / "monocyte" / f"{boxed.pk}.png") as picture:
        assert picture.size == expected.size
        assert picture.tobytes() == expected.tobytes()


def test_the_export_refuses_a_cell_of_another_lab(lab, base_model, reviewer, tmp_path) -> None:
    other = LabFactory.create()
    other_reviewer = MembershipFactory.create(lab=other, role=Role.PATHOLOGIST).user
    lab_with_cases(other, base_model, other_reviewer, cases=1, files=True)
    foreign = Cell.objects.first()
    assert foreign is not None

    with pytest.raises(ServiceError, match="not of"):
        export_cells(lab=lab, cells=[(foreign.pk, "neutrophil")], folder=tmp_path / "export")
    assert not list((tmp_path / "export").rglob("*.png"))


def _finished_job(lab, base_model):
    adapted = ModelVersionFactory.create(classes=CLASSES, lab=lab)
    return AdaptationJobFactory.create(
        lab=lab,
        base_model=base_model,
        result_model=adapted,
        status=AdaptationJob.Status.DONE,
        figures={"base": {"accuracy": 0.5, "n": 12}, "adapted": {"accuracy": 0.9, "n": 12}},
    )


def test_activating_an_adapted_model_makes_it_the_labs_model_audited_and_declining_undoes_it(
    lab, base_model, admin
) -> None:
    lab.active_model = base_model
    lab.save()
    job = _finished_job(lab, base_model)

    services.decide(admin=admin, job=job, activate=True)
    lab.refresh_from_db()
    assert lab.active_model == job.result_model
    services.decide(admin=admin, job=job, activate=False)
    lab.refresh_from_db()
    job.refresh_from_db()

    assert lab.active_model == base_model
    assert job.status == AdaptationJob.Status.DECLINED
    actions = list(
        AuditEvent.objects.filter(lab=lab).order_by("id").values_list("action", flat=True)
    )
    assert actions == [
        "model.activated",
        services.ADAPTATION_ACTIVATED,
        "model.activated",
        services.ADAPTATION_DECLINED,
    ]


def test_a_model_adapted_to_one_lab_is_neither_anothers_to_activate_nor_anyones_default(
    lab, base_model, admin
) -> None:
    job = _finished_job(lab, base_model)
    other = LabFactory.create()
    other_admin = MembershipFactory.create(lab=other, role=Role.ADMIN).user

    with pytest.raises(AccountError, match="not a model of"):
        activate_model(admin=other_admin, lab=other, model_version=job.result_model)
    with pytest.raises(RoleRequired):
        services.decide(admin=other_admin, job=job, activate=True)
    # The adapted model is the newest row, but a lab without a choice gets the newest shared.
    assert active_model_for(lab=other) == base_model
    assert active_model_for(lab=lab) == base_model


def test_a_job_not_finished_has_nothing_to_decide(lab, base_model, admin) -> None:
    job = AdaptationJobFactory.create(lab=lab, base_model=base_model)
    with pytest.raises(ServiceError, match="nothing to decide"):
        services.decide(admin=admin, job=job, activate=True)


def test_the_worker_claims_a_job_once(lab, base_model) -> None:
    job = AdaptationJobFactory.create(lab=lab, base_model=base_model)
    assert services.claim(job_id=job.pk) is not None
    assert services.claim(job_id=job.pk) is None  # a repeated message: nothing to do
    job.refresh_from_db()
    assert (job.status, job.deliveries) == (AdaptationJob.Status.RUNNING, 1)


def test_settings_for_the_minimums_apply(lab, base_model, reviewer, settings: LazySettings) -> None:
    settings.ADAPT_MIN_TRAIN_CELLS = 4
    settings.ADAPT_MIN_HELDOUT_CELLS = 1
    lab_with_cases(lab, base_model, reviewer, cases=5)

    plan = selectors.adaptation_plan(lab=lab, base_model=base_model)

    assert plan.classes == CLASSES
    assert plan.heldout["monocyte"] >= 1
    assert plan.train["monocyte"] >= 4


def test_an_adapted_model_without_a_threshold_cannot_be_activated_it_would_accept_every_cell(
    lab, base_model, admin
) -> None:
    job = _finished_job(lab, base_model)
    ModelVersion.objects.filter(pk=job.result_model_id).update(
        threshold=None, metrics={"target_accuracy": 0.995}
    )
    job.refresh_from_db()

    with pytest.raises(ServiceError, match="no confidence threshold") as refused:
        services.decide(admin=admin, job=job, activate=True)

    assert "99.5% right" in str(refused.value)
    lab.refresh_from_db()
    assert lab.active_model is None
    assert services.decide(admin=admin, job=job, activate=False).status == "declined"


def test_a_dead_adaptation_workers_running_job_is_failed_with_the_reason(lab, base_model) -> None:
    from django.core.management import call_command

    running = AdaptationJobFactory.create(lab=lab, base_model=base_model)
    services.claim(job_id=running.pk)
    queued = AdaptationJobFactory.create(lab=lab, base_model=base_model)

    call_command("fail_lost_adaptations")

    running.refresh_from_db()
    queued.refresh_from_db()
    assert running.status == AdaptationJob.Status.FAILED
    assert "adaptation worker stopped" in running.error
    assert queued.status == AdaptationJob.Status.QUEUED  # its message is still to come
    assert AuditEvent.objects.filter(
        action=services.ADAPTATION_FAILED, object_id=str(running.pk)
    ).exists()
