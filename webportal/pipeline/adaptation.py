"""The adaptation worker's side: export, adapt, measure, register.

Only the worker consuming the `adapt` queue imports this module (through workers.tasks): it
brings in PyTorch. The steps, each reported on the job row with a heartbeat:

1. claim the job (queued -> running; a repeated message finds nothing to claim);
2. export the plan's cells (kept on the job since the start) to a work folder
   (`webportal.adaptation.export`): train/ and heldout/, one sub-folder per class;
3. adapt the base checkpoint to train/ by ADAPT_METHOD:
   - `few-cell` (the default): `ml.adapt.adapt_folder`, the best methods measured with 10-25
     reviewed cells a class (docs/MODELS.md, "Adapting with few reviewed cells", "Second
     study"): the lab's BatchNorm statistics, or Reinhard normalisation towards the training
     stain, whichever gets more reviewed cells right out of fold, with a logistic head on 4
     views of the reviewed cells (averaged at prediction); the temperature and a
     conservative auto-accept threshold from the chosen one's out-of-fold predictions (none
     with too few cells: the model then auto-accepts nothing), a batch guard refitted;
     minutes on a CPU;
   - `fine-tune`: `ml.train.fine_tune` (`--init`: its classes kept, the loss masked to the
     lab's classes, temperature and threshold refitted on a val split), options from
     ADAPT_TRAIN_OPTIONS, progress per epoch;
4. evaluate the base and the adapted model on heldout/ (`ml.evaluate.evaluate_folder`);
5. keep the checkpoint in ADAPTED_MODELS_DIR and register it as a ModelVersion of the lab,
   with both figures in its metrics, inactive; the job is done.

The work folder (copies of clinical images) is deleted whatever happens.
"""

from __future__ import annotations

import logging
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from ml.adapt import FewCellOptions, adapt_folder
from ml.checkpoint import load_ood, sha256_of
from ml.evaluate import evaluate_folder
from ml.inference import Classifier
from ml.train import fine_tune
from webportal.adaptation import services
from webportal.adaptation.export import export_cells
from webportal.adaptation.models import AdaptationJob
from webportal.adaptation.selectors import HELDOUT, TRAIN
from webportal.cases.models import ModelVersion
from webportal.core.errors import ServiceError
from webportal.pipeline.registration import register_model

logger = logging.getLogger(__name__)

Stage = AdaptationJob.Stage
FIGURE_KEYS = ("n", "accuracy", "macro_f1", "coverage", "accuracy_above_threshold", "threshold")


def train_options(recipe: str | None = None) -> list[str]:
    """ADAPT_TRAIN_OPTIONS (or `recipe`), with what a Celery pool process needs: no DataLoader
    worker processes (a pool process is a daemon and may not start children) and its thread
    count (ADAPT_THREADS)."""
    options = shlex.split(settings.ADAPT_TRAIN_OPTIONS if recipe is None else recipe)
    options += ["--workers", "0"]
    threads = settings.ADAPT_THREADS or torch.get_num_threads()
    return [*options, "--threads", str(threads)]


def figures_of(report: dict[str, Any]) -> dict[str, Any]:
    """The part of an ml.evaluate report the page and the registry keep."""
    return {
        **{key: report.get(key) for key in FIGURE_KEYS},
        "per_class": {
            label: {k: row[k] for k in ("support", "precision", "recall", "f1")}
            for label, row in report["per_class"].items()
            if row["support"] > 0
        },
    }


def _checkpoint_of(model_version: ModelVersion) -> Path:
    path = Path(model_version.checkpoint_path)
    if not path.is_file():
        raise ServiceError(f"The checkpoint of {model_version} is missing at {path}.")
    if sha256_of(path) != model_version.checkpoint_sha256:
        raise ServiceError(f"The checkpoint at {path} does not match the sha256 registered.")
    return path


def _measure(path: Path, heldout: Path) -> dict[str, Any]:
    return figures_of(evaluate_folder(Classifier.load(path), heldout, workers=0))


FEW_CELL, FINE_TUNE = "few-cell", "fine-tune"


def _few_cell(job: AdaptationJob, base: Path, train: Path, out: Path) -> dict[str, Any]:
    """ml.adapt's few-cell method: seconds, no epochs. Its auto-accept threshold is the
    conservative one (`auto_accept`: the cells it rests on, or why there is none)."""
    services.report_progress(job_id=job.pk, stage=Stage.TRAINING)
    threads = settings.ADAPT_THREADS or torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        options = FewCellOptions()
        metrics = adapt_folder(init=base, data=train, out=out, options=options)
    finally:
        torch.set_num_threads(before)
    return {
        "method": FEW_CELL,
        "options": options.to_dict(),
        "guard": metrics["guard"],
        "auto_accept": metrics["auto_accept"],
        # Which candidate was kept, both candidates' out-of-fold figures, and any not tried.
        "chosen": metrics["chosen"],
        "chosen_because": metrics["chosen_because"],
        "candidates": metrics["candidates"],
        "skipped": metrics["skipped"],
        # Each reviewed training cell scored by a head fitted without it.
        "training_val": {**metrics["reviewed_oof"], "out_of_fold": True},
        "epochs": None,
    }


def _fine_tune(job: AdaptationJob, base: Path, train: Path, out: Path) -> dict[str, Any]:
    """`ml.train --init` on the training cells (ADAPT_TRAIN_OPTIONS), progress per epoch. Its
    threshold is ml.train's, fitted on its own val split (`auto_accept` says so)."""
    options = train_options()
    services.report_progress(job_id=job.pk, stage=Stage.TRAINING, epochs_done=0)

    def on_epoch(row: dict[str, Any]) -> None:
        services.report_progress(
            job_id=job.pk,
            stage=Stage.TRAINING,
            epochs_done=int(row["epoch"]) + 1,
            epochs_planned=int(row["epochs"]),
        )

    training = fine_tune(init=base, data=train, out=out, options=options, on_epoch=on_epoch)
    return {
        "method": FINE_TUNE,
        "options": options,
        "guard": training.get("guard"),
        "auto_accept": {
            "threshold": training.get("threshold"),
            "cells": training.get("n"),
            "rule": "lowest confidence whose val cells above it are "
            f"{training.get('target_accuracy')} right, as measured (no bound)",
        },
        "training_val": {k: training.get(k) for k in ("n", "accuracy", "macro_f1")},
        "epochs": training.get("best_epoch"),
    }


def run_adaptation(*, job_id: int) -> None:
    """Run one adaptation job to the end; a job not queued is left as it is. An error fails
    the job with its reason (the task's caller logs it)."""
    job = services.claim(job_id=job_id)
    if job is None:
        logger.info("adaptation %s: not queued, nothing to do", job_id)
        return
    work = Path(settings.ADAPT_WORK_DIR) / f"job-{job.pk}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        _run(job, work)
    except SoftTimeLimitExceeded:
        limit = settings.ADAPT_TIME_LIMIT_SECONDS
        services.mark_failed(
            job_id=job.pk,
            reason=f"It ran longer than its time limit (ADAPT_TIME_LIMIT_SECONDS, {limit} s) "
            "and was stopped.",
        )
        raise
    except BaseException as exc:
        services.mark_failed(job_id=job.pk, reason=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(job: AdaptationJob, work: Path) -> None:
    base_path = _checkpoint_of(job.base_model)
    services.report_progress(job_id=job.pk, stage=Stage.EXPORTING)
    for side in (TRAIN, HELDOUT):
        export_cells(lab=job.lab, cells=job.plan["cells"][side], folder=work / side)

    out = work / "out" / "adapted.pt"
    method = settings.ADAPT_METHOD
    if method == FEW_CELL:
        method_figures = _few_cell(job, base_path, work / TRAIN, out)
    else:
        method_figures = _fine_tune(job, base_path, work / TRAIN, out)

    services.report_progress(job_id=job.pk, stage=Stage.EVALUATING)
    figures = {
        "base": _measure(base_path, work / HELDOUT),
        "adapted": _measure(out, work / HELDOUT),
        "group_by": job.plan["group_by"],
        "heldout_cases": job.plan.get("heldout_cases"),
        # Whether each checkpoint carries a batch guard (ml.ood): neither method carries the
        # base model's over (the features moved); each refits one on the lab's own training
        # cells; with too few cells there is none, and `guard` says why (the page says what
        # that means).
        "base_guard": load_ood(base_path) is not None,
        "adapted_guard": load_ood(out) is not None,
        **method_figures,
    }

    services.report_progress(job_id=job.pk, stage=Stage.REGISTERING)
    kept_dir = Path(settings.ADAPTED_MODELS_DIR)
    kept_dir.mkdir(parents=True, exist_ok=True)
    digest = sha256_of(out)
    kept = kept_dir / f"{job.lab.slug}-adapt{job.pk}-{digest[:12]}.pt"
    shutil.copyfile(out, kept)
    model = register_model(
        checkpoint_path=kept,
        name=f"{job.base_model.name} adapted to {job.lab.slug} (#{job.pk})",
        lab=job.lab,
        extra_metrics={"adaptation": {"job": job.pk, "base_model": job.base_model.pk, **figures}},
    )
    services.finish(job_id=job.pk, result_model=model, figures=figures)
    logger.info(
        "adaptation %s (%s): %s registered; held-out accuracy %.3f -> %.3f on %d cells",
        job.pk,
        figures["method"],
        model,
        figures["base"]["accuracy"],
        figures["adapted"]["accuracy"],
        figures["adapted"]["n"],
    )
