"""The lab admin's adaptation pages: who may see and use them, and what they show."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import (
    AdaptationJobFactory,
    CaseFactory,
    LabFactory,
    MembershipFactory,
    ModelVersionFactory,
    reviewed_batch,
)
from tests.webportal.adaptation.conftest import CLASSES, PER_CASE
from webportal.accounts.models import Role
from webportal.adaptation import services
from webportal.adaptation.models import AdaptationJob
from webportal.audit.models import AuditEvent
from webportal.cases.models import adaptation_choice_text

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def finished_job(lab, base_model) -> AdaptationJob:
    adapted = ModelVersionFactory.create(classes=CLASSES, lab=lab, name="pbc8 adapted")
    return AdaptationJobFactory.create(
        lab=lab,
        base_model=base_model,
        result_model=adapted,
        status=AdaptationJob.Status.DONE,
        plan={
            "classes": ["lymphocyte", "neutrophil"],
            "train": {"lymphocyte": 18, "neutrophil": 18},
            "heldout": {"lymphocyte": 6, "neutrophil": 6},
        },
        figures={
            "heldout_cases": 2,
            "base": {
                "n": 12,
                "accuracy": 0.5,
                "macro_f1": 0.48,
                "coverage": 0.25,
                "accuracy_above_threshold": 1.0,
                "per_class": {
                    "lymphocyte": {"support": 6, "recall": 1 / 3},
                    "neutrophil": {"support": 6, "recall": 2 / 3},
                },
            },
            "adapted": {
                "n": 12,
                "accuracy": 11 / 12,
                "macro_f1": 0.91,
                "coverage": 0.75,
                "accuracy_above_threshold": 1.0,
                "per_class": {
                    "lymphocyte": {"support": 6, "recall": 5 / 6},
                    "neutrophil": {"support": 6, "recall": 1.0},
                },
            },
        },
    )


@pytest.mark.parametrize("role", [Role.STAFF, Role.PATHOLOGIST, Role.INTEGRATOR])
def test_a_member_who_is_not_the_labs_admin_is_refused_every_adaptation_url(
    role: str, lab, base_model
) -> None:
    job = finished_job(lab, base_model)
    client = client_for(MembershipFactory.create(lab=lab, role=role).user)

    answers = [
        client.get(reverse("adaptation:adaptation", args=[lab.pk])).status_code,
        client.post(reverse("adaptation:start", args=[lab.pk])).status_code,
        client.get(reverse("adaptation:job", args=[lab.pk, job.pk])).status_code,
        client.post(
            reverse("adaptation:decide", args=[lab.pk, job.pk]), {"decision": "activate"}
        ).status_code,
    ]

    assert answers == [403, 403, 403, 403]
    assert not AdaptationJob.objects.exclude(pk=job.pk).exists()
    lab.refresh_from_db()
    assert lab.active_model is None


def test_another_labs_adaptations_are_not_found_even_under_ones_own_lab(lab, base_model) -> None:
    job = finished_job(lab, base_model)
    other_admin = MembershipFactory.create(lab=LabFactory.create(), role=Role.ADMIN).user
    own_lab = other_admin.memberships.get().lab
    client = client_for(other_admin)

    answers = [
        client.get(reverse("adaptation:adaptation", args=[lab.pk])).status_code,
        client.get(reverse("adaptation:job", args=[lab.pk, job.pk])).status_code,
        client.get(reverse("adaptation:job", args=[own_lab.pk, job.pk])).status_code,
        client.post(
            reverse("adaptation:decide", args=[own_lab.pk, job.pk]), {"decision": "activate"}
        ).status_code,
    ]

    assert answers == [404, 404, 404, 404]
    own_page = client.get(reverse("adaptation:adaptation", args=[own_lab.pk]))
    assert own_page.status_code == 200
    assert f"#{job.pk}" not in own_page.content.decode()


def test_the_page_shows_the_reviewed_cells_per_class_and_why_one_is_left_out(
    lab, base_model
) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    reviewer = MembershipFactory.create(lab=lab, role=Role.PATHOLOGIST).user
    lab.active_model = base_model
    lab.save()
    for _ in range(8):
        reviewed_batch(
            case=CaseFactory.create(lab=lab),
            model_version=base_model,
            labels=PER_CASE,
            reviewer=reviewer,
        )

    page = client_for(admin).get(reverse("adaptation:adaptation", args=[lab.pk])).content.decode()

    assert "Start adaptation" in page
    assert "no: 6 to train on and 2 held out; it needs 10 and 5" in page  # monocyte
    assert '<td class="num">18</td>\n      <td class="num">6</td>' in page


def test_too_few_reviewed_cells_show_the_reason_instead_of_the_start_button(
    lab, base_model
) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    lab.active_model = base_model
    lab.save()

    page = client_for(admin).get(reverse("adaptation:adaptation", args=[lab.pk])).content.decode()

    assert "Too few reviewed cells to adapt the model yet" in page
    assert "Start adaptation" not in page


def test_the_job_page_shows_both_models_figures_and_activating_is_audited(lab, base_model) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    job = finished_job(lab, base_model)
    client = client_for(admin)

    page = client.get(reverse("adaptation:job", args=[lab.pk, job.pk])).content.decode()
    assert "On 12 held-out reviewed cells of 2 cases not used for training" in page
    assert "50.0%" in page
    assert "91.7%" in page
    assert "33.3%" in page
    assert "83.3%" in page
    assert "Activate for" in page

    response = client.post(
        reverse("adaptation:decide", args=[lab.pk, job.pk]), {"decision": "activate"}
    )

    assert response.status_code == 302
    lab.refresh_from_db()
    assert lab.active_model == job.result_model
    assert AuditEvent.objects.filter(
        lab=lab, actor=admin, action=services.ADAPTATION_ACTIVATED, object_id=str(job.pk)
    ).exists()
    page = client.get(reverse("adaptation:job", args=[lab.pk, job.pk])).content.decode()
    assert "in use" in page
    assert "Stop using it" in page


def test_the_model_page_lists_the_labs_own_adapted_model_but_not_another_labs(
    lab, base_model
) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    ours = finished_job(lab, base_model).result_model
    theirs = finished_job(LabFactory.create(), base_model).result_model
    assert theirs is not None
    theirs.name = "someone else's adapted model"
    theirs.save()

    page = client_for(admin).get(reverse("accounts:lab_model", args=[lab.pk])).content.decode()

    assert ours is not None
    assert ours.name in page
    assert "someone else" not in page


def test_the_job_page_offers_no_activation_of_a_model_without_a_threshold(lab, base_model) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    job = finished_job(lab, base_model)
    assert job.result_model is not None
    job.result_model.threshold = None
    job.result_model.save()

    page = client_for(admin).get(reverse("adaptation:job", args=[lab.pk, job.pk])).content.decode()

    assert "It cannot be activated" in page
    assert "Activate for" not in page
    assert "Keep the current model" in page


def test_the_job_page_says_when_activating_would_lose_the_batch_check(lab, base_model) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    job = finished_job(lab, base_model)
    url = reverse("adaptation:job", args=[lab.pk, job.pk])
    client = client_for(admin)
    assert 'id="no-guard"' not in client.get(url).content.decode()  # nothing known: silent

    job.figures = {**job.figures, "base_guard": True, "adapted_guard": False}
    job.save()

    assert "the adapted one has none" in client.get(url).content.decode()


def few_cell_job(
    lab, base_model, *, auto_accept: dict[str, Any], threshold: float
) -> AdaptationJob:
    """A finished few-cell adaptation (ADAPT_METHOD=few-cell) whose model has a guard."""
    job = finished_job(lab, base_model)
    assert job.result_model is not None
    job.result_model.threshold = threshold
    job.result_model.guard = {"thresholds": {"20": 2.5, "100": 2.1}, "design": "pooled"}
    job.result_model.metrics = {"auto_accept": auto_accept}
    job.result_model.save()
    job.figures = {**job.figures, "method": "few-cell", "auto_accept": auto_accept}
    job.save()
    return job


def test_the_job_page_names_the_few_cell_method_and_says_it_auto_accepts_nothing_with_few_cells(
    lab, base_model
) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    accept = {"threshold": None, "cells": 36, "cells_needed": 299, "none_because": "36 cells"}
    job = few_cell_job(lab, base_model, auto_accept=accept, threshold=2.0)

    page = client_for(admin).get(reverse("adaptation:job", args=[lab.pk, job.pk])).content.decode()

    assert "Method: few-cell" in page
    assert "No auto-accepting: too few reviewed cells (36; 299 needed" in page
    # Safe to use: nothing is accepted without a person, so it may be activated.
    assert "Activate for" in page
    assert "never predicts them" in page


def test_the_job_page_gives_the_earned_threshold_and_the_cells_it_rests_on(lab, base_model) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    accept = {
        "threshold": 0.97,
        "cells": 400,
        "above": 320,
        "right_above": 320,
        "lower_bound": 0.9907,
        "cells_needed": 299,
    }
    job = few_cell_job(lab, base_model, auto_accept=accept, threshold=0.97)

    page = client_for(admin).get(reverse("adaptation:job", args=[lab.pk, job.pk])).content.decode()

    assert "at least 0.970: of 400 reviewed cells" in page
    assert "the 320 at or above it were 320 right (95% lower bound of their accuracy 99.1%)" in page
    assert "No auto-accepting" not in page


def test_a_job_from_before_the_method_was_recorded_is_named_a_fine_tune(lab, base_model) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    job = finished_job(lab, base_model)

    page = client_for(admin).get(reverse("adaptation:job", args=[lab.pk, job.pk])).content.decode()

    assert "Method: fine-tune" in page
    assert "still has them" in page


@pytest.mark.parametrize(
    ("method", "says"), [("few-cell", "refitted last layer"), ("fine-tune", "Fine-tunes")]
)
def test_the_adaptation_page_says_how_the_configured_method_adapts(
    method: str, says: str, lab, base_model, settings
) -> None:
    settings.ADAPT_METHOD = method
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user

    page = client_for(admin).get(reverse("adaptation:adaptation", args=[lab.pk])).content.decode()

    assert says in page


# What a few-cell adaptation chose (ml.adapt.adapt_to_cells: metrics["chosen"], ["candidates"]).
CANDIDATES = {
    "lab-bn": {"oof_right": 70, "oof_cells": 80, "oof_log_loss": 0.41},
    "reinhard": {"oof_right": 76, "oof_cells": 80, "oof_log_loss": 0.22},
}


def test_the_job_page_says_which_way_the_model_was_adapted_and_why(lab, base_model) -> None:
    admin = MembershipFactory.create(lab=lab, role=Role.ADMIN).user
    accept = {"threshold": None, "cells": 80, "cells_needed": 299}
    job = few_cell_job(lab, base_model, auto_accept=accept, threshold=2.0)
    job.figures = {**job.figures, "chosen": "reinhard", "candidates": CANDIDATES, "skipped": {}}
    job.save()

    page = client_for(admin).get(reverse("adaptation:job", args=[lab.pk, job.pk])).content.decode()

    choice = page[page.index('id="choice"') :]
    choice = choice[: choice.index("</p>")]
    assert "Adapted with colour normalisation" in choice
    assert "named 76 of 80 right, against 70 of 80 with the lab&#x27;s own picture" in choice
    assert "tie" not in choice


def test_the_choice_says_a_tie_was_broken_and_a_candidate_that_could_not_be_tried() -> None:
    tie = {**CANDIDATES, "lab-bn": {**CANDIDATES["lab-bn"], "oof_right": 76}}
    alone = {"lab-bn": CANDIDATES["lab-bn"]}
    unknown = {"reinhard": "the base model's training stain is not known"}

    assert "(a tie: it was kept for being more confident" in adaptation_choice_text(
        {"chosen": "reinhard", "candidates": tie}
    )
    text = adaptation_choice_text({"chosen": "lab-bn", "candidates": alone, "skipped": unknown})
    assert text.startswith("Adapted with the lab's own picture statistics")
    assert "the only one that could be tried" in text
    assert "training stain is not known" in text
    assert adaptation_choice_text({"method": "fine-tune"}) == ""
