"""A lab admin adapts the lab's model, in Chromium: the plan, a finished job's figures, and
activating the adapted model; a running job's page reloads itself under the CSP.

With SCREENSHOT_DIR set the 1366x768 screenshots land there (docs/screenshots/ holds the
committed ones: `SCREENSHOT_DIR=docs/screenshots pytest tests/e2e/test_adaptation_in_browser.py`).
The lab, its reviews and the job's figures are made up: the page is shown, not a result.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.factories import (
    PASSWORD,
    CaseFactory,
    LabFactory,
    MembershipFactory,
    ModelVersionFactory,
    reviewed_batch,
)
from webportal.accounts.models import Membership, Role
from webportal.adaptation import services
from webportal.adaptation.models import AdaptationJob
from webportal.cases.models import ModelVersion

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CLASSES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]
# Reviewed cells per case: a smear's usual mix, with too few basophils and igs to take part.
PER_CASE = ["neutrophil"] * 6 + ["lymphocyte"] * 3 + ["monocyte", "eosinophil"]
# Made-up share right per class (current, adapted) for the finished job's page.
RECALLS = {
    "eosinophil": (0.6, 0.8),
    "lymphocyte": (0.733, 0.933),
    "monocyte": (0.4, 0.8),
    "neutrophil": (0.767, 0.967),
}


def _save(page: Page, name: str) -> None:
    folder = os.environ.get("SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=False)


# A long lab name, as real ones are: the pages must wrap it, not widen.
LAB_NAME = "St Elsewhere and Royal Infirmary Joint Haematology and Blood Transfusion Laboratory"


def _no_wider_than_the_window(page: Page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{page.url} is {overflow} px wider than the window"


def _lab() -> tuple[Membership, ModelVersion]:
    lab = LabFactory.create(name=LAB_NAME)
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN, user__username="qm.kim")
    pathologist = MembershipFactory.create(lab=lab, role=Role.PATHOLOGIST, user__username="dr.ng")
    model = ModelVersionFactory.create(name="pbc8-mobilenetv2", classes=CLASSES)
    lab.active_model = model
    lab.save()
    for number in range(20):
        extra = ["basophil"] if number % 7 == 0 else (["ig"] if number % 5 == 0 else [])
        reviewed_batch(
            case=CaseFactory.create(lab=lab, accession_number=f"H26-{2000 + number}"),
            model_version=model,
            labels=[*PER_CASE, *extra],
            reviewer=pathologist.user,
        )
    return admin, model


def _finished(job: AdaptationJob, lab_model: ModelVersion) -> AdaptationJob:
    """What the adaptation worker writes at the end, with made-up figures."""
    services.claim(job_id=job.pk)
    train = sum(job.plan["train"].values())
    # The default method (few-cell) on fewer reviewed cells than a bounded threshold needs:
    # the model auto-accepts nothing (its threshold is ml.adapt.NO_AUTO_ACCEPT).
    auto_accept = {"threshold": None, "cells": train, "cells_needed": 299}
    # Which of the few-cell candidates was kept, as the adaptation worker records it.
    choice = {
        "chosen": "reinhard",
        "candidates": {
            "lab-bn": {"oof_right": train - 14, "oof_cells": train},
            "reinhard": {"oof_right": train - 6, "oof_cells": train},
        },
        "skipped": {},
    }
    adapted = ModelVersionFactory.create(
        name=f"pbc8-mobilenetv2 adapted to {job.lab.slug} (#{job.pk})",
        classes=CLASSES,
        lab=job.lab,
        threshold=2.0,
        metrics={"auto_accept": auto_accept, **choice},
        guard={"thresholds": {"1": 5.1, "20": 2.95, "100": 2.41}, "design": "pooled", "taps": []},
    )
    heldout = job.plan["heldout"]
    n = sum(heldout.values())

    def figures(
        which: int, coverage: float, f1: float, right_above: float | None
    ) -> dict[str, object]:
        per_class = {
            label: {"support": heldout[label], "recall": RECALLS[label][which]} for label in heldout
        }
        right = sum(heldout[c] * RECALLS[c][which] for c in heldout)
        return {
            "n": n,
            "accuracy": right / n,
            "macro_f1": f1,
            "coverage": coverage,
            "accuracy_above_threshold": right_above,
            "per_class": per_class,
        }

    services.finish(
        job_id=job.pk,
        result_model=adapted,
        figures={
            "base": figures(0, 0.41, 0.62, 0.93),
            "adapted": figures(1, 0.0, 0.87, None),
            "method": "few-cell",
            "auto_accept": auto_accept,
            **choice,
            "heldout_cases": job.plan["heldout_cases"],
            "group_by": job.plan["group_by"],
            "base_guard": True,
            "adapted_guard": True,
            "guard": {"fitted_on_cells": train - 15, "calibrated_on_cells": 15},
        },
    )
    job.refresh_from_db()
    return job


def _log_in(page: Page, base: str, membership: Membership) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", membership.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")


def test_a_lab_admin_starts_an_adaptation_reads_its_figures_and_activates_it(
    page: Page, console_errors: list[str], live_server
) -> None:
    admin, model = _lab()
    lab = admin.lab
    base = live_server.url
    _log_in(page, base, admin)

    page.goto(f"{base}/lab/{lab.pk}/adaptation/")
    expect(page.locator("#plan tbody tr")).to_have_count(6)
    expect(page.locator("#plan")).to_contain_text("no: ")  # basophil, ig: too few
    _no_wider_than_the_window(page)
    _save(page, "adaptation")
    page.click("text=Start adaptation")

    job = AdaptationJob.objects.get(lab=lab)
    expect(page).to_have_url(f"{base}/lab/{lab.pk}/adaptation/{job.pk}/")
    expect(page.locator("#state")).to_contain_text("Waiting for the adaptation worker")
    # The running page reloads itself (a static script: no CSP violation).
    with page.expect_navigation(timeout=15_000):
        pass
    assert console_errors == []

    job = _finished(job, model)
    page.goto(f"{base}/lab/{lab.pk}/adaptation/{job.pk}/")
    expect(page.locator("#summary")).to_contain_text("held-out reviewed cells")
    expect(page.locator("#per-class tbody tr")).to_have_count(4)
    train = sum(job.plan["train"].values())
    expect(page.locator("#guard")).to_contain_text(f"{train - 15} to fit on, 15 to set")
    expect(page.locator("#method")).to_contain_text("few-cell")
    expect(page.locator("#auto-accept")).to_contain_text(
        f"No auto-accepting: too few reviewed cells ({train}; 299 needed"
    )
    expect(page.locator("#choice")).to_contain_text(
        f"Adapted with colour normalisation (each picture's colours moved to those of the stain "
        f"the model was trained on, the network's trained statistics kept): with each reviewed "
        f"cell classified by a model adapted without it, this way named {train - 6} of {train} "
        f"right, against {train - 14} of {train} with the lab's own picture statistics"
    )
    _no_wider_than_the_window(page)
    _save(page, "adaptation-job")

    page.click(f"text=Activate for {LAB_NAME}")
    expect(page.locator(".message")).to_contain_text("now classifies the lab's new batches")
    expect(page.locator("#decision")).to_contain_text("in use")
    lab.refresh_from_db()
    assert lab.active_model == job.result_model

    # The Model page names the adapted model, its guard and that it auto-accepts nothing.
    page.goto(f"{base}/lab/{lab.pk}/model/")
    expect(page.locator("#current-model")).to_contain_text(str(job.result_model))
    expect(page.locator("#current-guard")).to_contain_text("pooled features")
    expect(page.locator("#current-guard")).to_contain_text("2.95")
    expect(page.locator("#current-threshold")).to_contain_text(
        f"{train} reviewed cells; a threshold needs at least 299"
    )
    expect(page.locator("#current-adaptation")).to_contain_text("Adapted with colour normalisation")
    _no_wider_than_the_window(page)
    _save(page, "lab-model-adapted")
    assert console_errors == []
