"""A real Celery worker consuming only the `adapt` queue adapts a tiny model to a lab's reviewed
cells: a new, inactive model version of that lab appears with its held-out figures. By each
ADAPT_METHOD: few-cell (the default) and fine-tune."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import LazySettings

from ml.checkpoint import read_metadata, sha256_of
from tests.conftest import TINY_CLASSES
from tests.factories import CaseFactory, MembershipFactory, reviewed_batch
from tests.services import celery_worker, wait_until
from webportal.accounts.models import Role
from webportal.adaptation import services
from webportal.adaptation.models import AdaptationJob
from webportal.audit.models import AuditEvent
from webportal.cases.models import Batch, ModelVersion
from webportal.celery import use_broker

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# Per case: 3 lymphocytes, 3 neutrophils, 1 monocyte (too few monocytes to take part).
PER_CASE = ["lymphocyte"] * 3 + ["neutrophil"] * 3 + ["monocyte"]


def adapt_on_a_real_worker(
    *, model: ModelVersion, cases: int, env: dict[str, str], tmp_path: Path
) -> tuple[AdaptationJob, Path]:
    """A lab with `cases` reviewed cases of PER_CASE; its admin starts an adaptation that a real
    worker on the `adapt` queue (with `env`) runs to its end. The finished job and the log."""
    admin = MembershipFactory.create(role=Role.ADMIN)
    lab = admin.lab
    reviewer = MembershipFactory.create(lab=lab, role=Role.PATHOLOGIST).user
    for _ in range(cases):
        reviewed_batch(
            case=CaseFactory.create(lab=lab),
            model_version=model,
            labels=PER_CASE,
            reviewer=reviewer,
            with_files=True,
        )
    broker = tmp_path / "broker"
    use_broker("filesystem://", broker)
    log = tmp_path / "adapt-worker.log"
    with celery_worker(
        broker_url="filesystem://",
        broker_folder=broker,
        log_path=log,
        extra_env=env,
        queues="adapt",
    ):
        job = services.start_adaptation(admin=admin.user, lab=lab)
        wait_until(
            lambda: not AdaptationJob.objects.get(pk=job.pk).is_active,
            timeout=300,
            what="the adaptation to finish",
        )
    job.refresh_from_db()
    return job, log


def test_a_fine_tuning_worker_on_the_adapt_queue_registers_an_inactive_adapted_model(
    tiny_model: ModelVersion, tmp_path: Path, settings: LazySettings
) -> None:
    models_dir, work_dir = tmp_path / "models", tmp_path / "work"
    env = {
        "ADAPT_METHOD": "fine-tune",
        # A recipe of seconds for a 32-pixel model on one thread; a third of the training
        # cells are its val split, enough (12) to calibrate the refitted batch guard on.
        "ADAPT_TRAIN_OPTIONS": "--epochs 2 --head-epochs 1 --views 1 --batch-size 16 "
        "--val-fraction 0.34",
        "ADAPT_THREADS": "1",
        "ADAPTED_MODELS_DIR": str(models_dir),
        "ADAPT_WORK_DIR": str(work_dir),
    }
    job, log = adapt_on_a_real_worker(model=tiny_model, cases=8, env=env, tmp_path=tmp_path)
    lab = job.lab
    lab.refresh_from_db()
    assert job.status == AdaptationJob.Status.DONE, f"{job.error}\n{log.read_text()[-4000:]}"
    assert job.epochs_done == job.epochs_planned == 2
    adapted = job.result_model
    assert adapted is not None
    assert adapted != tiny_model
    # A model of this lab only, and not in use until the admin activates it.
    assert adapted.lab == lab
    assert lab.active_model is None
    assert not Batch.objects.filter(model_version=adapted).exists()
    # The checkpoint kept, registered under its own sha256, with the base model's classes.
    path = Path(adapted.checkpoint_path)
    assert path.parent == models_dir
    assert path.is_file()
    assert sha256_of(path) == adapted.checkpoint_sha256
    assert read_metadata(path).classes == TINY_CLASSES == adapted.classes
    assert not any(work_dir.iterdir())  # the exported copies of the lab's cells are gone
    # Both models measured on the same held-out cells: two whole cases, 6 + 6 cells.
    assert job.plan["heldout"] == {"lymphocyte": 6, "neutrophil": 6}
    for model in ("base", "adapted"):
        figures = job.figures[model]
        assert figures["n"] == 12
        assert 0.0 <= figures["accuracy"] <= 1.0
        assert {k: v["support"] for k, v in figures["per_class"].items()} == {
            "lymphocyte": 6,
            "neutrophil": 6,
        }
    # The random tiny base has no batch guard; the adapted model gets one refitted on the
    # lab's own training cells (36: 2 x 3 a case over 6 cases), calibrated on their val split.
    assert (job.figures["base_guard"], job.figures["adapted_guard"]) == (False, True)
    guard = job.figures["guard"]
    assert guard["fitted_on_cells"] + guard["calibrated_on_cells"] == 36
    assert guard["calibrated_on_cells"] >= 10
    assert adapted.has_guard
    assert {"20", "100"} <= set(adapted.guard["thresholds"])
    assert adapted.metrics["adaptation"]["base"] == job.figures["base"]
    assert adapted.metrics["adaptation"]["adapted"] == job.figures["adapted"]
    assert AuditEvent.objects.filter(
        action=services.ADAPTATION_FINISHED, object_id=str(job.pk), lab=lab
    ).exists()
    assert "loaded" not in log.read_text()  # an adaptation worker loads no classifier


def test_by_default_the_worker_adapts_with_the_few_cell_method_and_auto_accepts_nothing(
    tiny_model: ModelVersion, tmp_path: Path
) -> None:
    models_dir, work_dir = tmp_path / "models", tmp_path / "work"
    env = {  # no ADAPT_METHOD: the default
        "ADAPT_THREADS": "1",
        "ADAPTED_MODELS_DIR": str(models_dir),
        "ADAPT_WORK_DIR": str(work_dir),
    }
    job, log = adapt_on_a_real_worker(model=tiny_model, cases=12, env=env, tmp_path=tmp_path)
    lab = job.lab
    assert job.status == AdaptationJob.Status.DONE, f"{job.error}\n{log.read_text()[-4000:]}"
    adapted = job.result_model
    assert adapted is not None
    assert adapted.lab == lab
    meta = read_metadata(Path(adapted.checkpoint_path))
    assert meta.classes == TINY_CLASSES == adapted.classes
    assert meta.recipe["method"] == "few-cell" == job.figures["method"]
    assert meta.recipe["init_sha256"] == tiny_model.checkpoint_sha256
    train = sum(job.plan["train"].values())
    assert meta.metrics["reviewed_per_class"] == job.plan["train"]
    # The tiny base model has no record of its training stain: only the lab's BatchNorm
    # statistics could be tried, and the job says so; the model averages four views.
    assert job.figures["chosen"] == meta.metrics["chosen"] == "lab-bn"
    assert "training stain is not known" in job.figures["skipped"]["reinhard"]
    assert list(job.figures["candidates"]) == ["lab-bn"]
    assert meta.views == ("identity", "flip", "rot90", "transpose")
    # Far fewer reviewed cells than a bounded threshold needs: the model auto-accepts nothing,
    # and the job says on how many cells that rests.
    accept = job.figures["auto_accept"]
    assert accept["threshold"] is None
    assert accept["cells"] == train < accept["cells_needed"] == 299
    assert adapted.auto_accepts_nothing
    assert job.figures["adapted"]["coverage"] == 0.0
    # Measured on the same held-out cells as the base model.
    assert (
        job.figures["adapted"]["n"] == job.figures["base"]["n"] == sum(job.plan["heldout"].values())
    )
    # A guard refitted on the lab's cells: a quarter of each class calibrates it.
    assert (
        job.figures["guard"]["fitted_on_cells"] + job.figures["guard"]["calibrated_on_cells"]
        == train
    )
    assert adapted.has_guard
    assert {"20", "100"} <= set(adapted.guard["thresholds"])
    assert adapted.guard["design"] == "pooled"
    assert not any(work_dir.iterdir())
