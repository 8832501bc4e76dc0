"""The batch guard in the job (no worker process): the verdict, what it does to auto-acceptance,
the report, and that it is made once per uploaded batch whatever the chunks, shards and crashes."""

from __future__ import annotations

import pytest
from django.conf import LazySettings
from django.contrib.auth.models import User

from tests.conftest import GUARDED_THRESHOLD, cell_pngs
from tests.factories import BatchFactory, MembershipFactory
from webportal.accounts.models import Role
from webportal.cases import batch_check, services
from webportal.cases.models import Batch, Cell, ModelVersion, Prediction
from webportal.cases.selectors import PENDING, batch_cells, current_label
from webportal.cases.services import ServiceError
from webportal.pipeline import batch_job, verdict
from webportal.reports import services as reports
from webportal.reports.differential import UNIDENTIFIED
from webportal.reports.reviews import review_cells

pytestmark = pytest.mark.django_db


def _run(case, files) -> Batch:
    batch = services.submit_batch(case=case, created_by=None, files=files)
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    return batch


def _pathologist(case) -> User:
    return MembershipFactory.create(lab=case.lab, role=Role.PATHOLOGIST).user


# --- the one rule of auto-acceptance ---------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "confidence", "expected"),
    [
        (Batch.Check.PASSED, 0.99, "neutrophil"),
        (Batch.Check.PASSED, 0.30, UNIDENTIFIED),  # below the threshold, as ever
        (Batch.Check.NO_GUARD, 0.99, "neutrophil"),
        (Batch.Check.TOO_FEW, 0.99, "neutrophil"),
        (Batch.Check.NOT_CHECKED, 0.99, "neutrophil"),
        (Batch.Check.FLAGGED, 0.99, UNIDENTIFIED),  # whatever its confidence
        (Batch.Check.FLAGGED, 0.30, UNIDENTIFIED),
        (Batch.Check.PENDING, 0.99, PENDING),  # not auto-accepted before the verdict
    ],
)
def test_a_cell_is_auto_accepted_only_if_its_batch_check_allows_it(
    check: str, confidence: float, expected: str
) -> None:
    assert (
        current_label(
            predicted="neutrophil",
            confidence=confidence,
            reviewed=None,
            threshold=0.5,
            batch_check=check,
        )
        == expected
    )


def test_a_threshold_above_every_confidence_auto_accepts_no_cell() -> None:
    """A few-cell adaptation without enough reviewed cells (ml.adapt.NO_AUTO_ACCEPT)."""
    model = ModelVersion(threshold=2.0)
    assert model.auto_accepts_nothing
    assert not ModelVersion(threshold=0.9).auto_accepts_nothing
    assert not ModelVersion(threshold=None).auto_accepts_nothing
    for confidence in (0.5, 0.999, 1.0):
        label = current_label(
            predicted="neutrophil",
            confidence=confidence,
            reviewed=None,
            threshold=model.threshold,
            batch_check=Batch.Check.PASSED,
        )
        assert label == UNIDENTIFIED


def test_an_odd_cell_is_unidentified_even_in_a_batch_that_passed() -> None:
    def label(*, reviewed: str | None = None, odd: bool = False) -> str:
        return current_label(
            predicted="neutrophil",
            confidence=0.99,
            reviewed=reviewed,
            threshold=0.5,
            batch_check=Batch.Check.PASSED,
            odd=odd,
        )

    assert label(odd=True) == UNIDENTIFIED
    assert label() == "neutrophil"
    assert label(reviewed="monocyte", odd=True) == "monocyte"


@pytest.mark.parametrize("check", [Batch.Check.FLAGGED, Batch.Check.PENDING])
def test_a_review_stands_whatever_the_batch_check(check: str) -> None:
    label = current_label(
        predicted="neutrophil",
        confidence=0.99,
        reviewed="monocyte",
        threshold=0.5,
        batch_check=check,
    )
    assert label == "monocyte"


# --- the verdict in the job ------------------------------------------------------------------


def test_a_shifted_batch_is_flagged_and_auto_accepts_no_cell(guarded_model: ModelVersion, case):
    batch = _run(case, cell_pngs(20, seed=4, shifted=True))

    assert batch.status == Batch.Status.DONE
    assert batch.ood_check == Batch.Check.FLAGGED
    assert batch.ood_score is not None
    assert batch.ood_threshold is not None
    assert batch.ood_score > batch.ood_threshold
    assert (batch.ood_cells_checked, batch.ood_threshold_size) == (20, 20)
    assert batch.ood_checked_at is not None
    states = batch_cells(batch=batch)
    assert len(states) == 20
    # Every cell was confident enough to be auto-accepted: the guard alone holds them back.
    assert all(s.confidence is not None and s.confidence >= GUARDED_THRESHOLD for s in states)
    assert {s.current for s in states} == {UNIDENTIFIED}
    report = batch.reports.get()
    counts = {row["label"]: row["count"] for row in report.differential}
    assert counts[UNIDENTIFIED] == 20
    assert report.flags[0]["code"] == batch_check.FLAG_CODE
    assert f"{batch.ood_score:.2f}" in report.flags[0]["message"]
    assert f"{batch.ood_threshold:.2f}" in report.flags[0]["message"]


def test_a_batch_like_the_validation_cells_passes_and_confident_cells_are_accepted(
    guarded_model: ModelVersion, case
):
    batch = _run(case, cell_pngs(20, seed=3))

    assert batch.ood_check == Batch.Check.PASSED
    assert batch.ood_score is not None
    assert batch.ood_threshold is not None
    assert batch.ood_score <= batch.ood_threshold
    states = batch_cells(batch=batch)
    assert all(s.current == s.predicted for s in states)
    assert batch_check.FLAG_CODE not in {f["code"] for f in batch.reports.get().flags}


def test_one_odd_cell_in_a_normal_batch_is_held_for_review_and_its_score_kept(
    guarded_model: ModelVersion, case, member
):
    from django.test import Client
    from django.urls import reverse

    # The second of these shifted cells scores about 16 alone against a per-cell limit of
    # about 10 (the first, 9.9, would pass: the limit is the 99th percentile of normal cells).
    odd_cell = cell_pngs(2, seed=4, shifted=True, prefix="odd")[1:]
    files = cell_pngs(19, seed=3, prefix="home") + odd_cell
    batch = _run(case, files)

    # The batch as a whole passes (one cell in twenty moves the mean little) ...
    assert batch.ood_check == Batch.Check.PASSED
    assert batch.ood_cell_threshold is not None
    states = batch_cells(batch=batch)
    assert len(batch.ood_cell_scores) == 20
    assert all(s.ood_score is not None for s in states)
    # ... but the odd cell, above the per-cell limit, is unidentified though confident, and the
    # others are not held.
    odd = [s for s in states if s.original_name.startswith("odd")]
    assert len(odd) == 1
    assert odd[0].odd
    assert odd[0].confidence is not None
    assert odd[0].confidence >= GUARDED_THRESHOLD
    assert odd[0].current == UNIDENTIFIED
    home = [s for s in states if not s.original_name.startswith("odd")]
    assert not any(s.odd for s in home)
    assert all(s.current == s.predicted for s in home)
    # The cell page gives its score and the limit.
    client = Client()
    client.force_login(member.user)
    page = client.get(reverse("cases:cell", args=[odd[0].cell_id])).content.decode()
    assert f"{odd[0].ood_score:.2f}" in page
    assert "this cell alone is unlike" in page


def test_a_model_without_a_guard_checks_nothing_and_says_so(tiny_model: ModelVersion, case):
    batch = _run(case, cell_pngs(3, seed=3))

    assert batch.ood_check == Batch.Check.NO_GUARD
    assert batch.ood_score is None
    summary = batch_check.describe(batch)
    assert summary is not None
    assert not summary.flagged
    assert summary.auto_accepts
    assert "no batch check" in summary.explanation


def test_a_batch_smaller_than_any_calibrated_size_is_too_few_to_judge(
    guarded_model: ModelVersion, case, monkeypatch: pytest.MonkeyPatch
):
    from ml.ood import OODGuard

    monkeypatch.setattr(OODGuard, "calibrated_size_for", lambda self, n: None)
    monkeypatch.setattr(OODGuard, "threshold_for", lambda self, n: None)
    batch = _run(case, cell_pngs(3, seed=4, shifted=True))

    assert batch.ood_check == Batch.Check.TOO_FEW
    assert batch.ood_cells_checked == 3
    # No batch verdict; each cell is still judged alone against the per-cell limit, and only
    # those above it are held.
    states = batch_cells(batch=batch)
    assert len(batch.ood_cell_scores) == 3
    assert all(s.current == (UNIDENTIFIED if s.odd else s.predicted) for s in states)


def test_a_flagged_batch_is_signed_only_once_a_person_has_reviewed_every_cell(
    guarded_model: ModelVersion, case
):
    batch = _run(case, cell_pngs(6, seed=4, shifted=True))
    pathologist = _pathologist(case)
    assert batch.ood_check == Batch.Check.FLAGGED

    with pytest.raises(ServiceError, match="6 counted cells are still unidentified"):
        reports.sign_report(actor=pathologist, report=batch.reports.get())
    review_cells(
        actor=pathologist, cells=Cell.objects.filter(image__batch=batch), label="lymphocyte"
    )
    signed = reports.sign_report(
        actor=pathologist, report=batch.reports.get(), below_minimum_reason="A test batch."
    )

    counts = {row["label"]: row["count"] for row in signed.differential}
    assert counts["lymphocyte"] == 6
    assert counts[UNIDENTIFIED] == 0
    # The signed report still says why nothing was auto-accepted.
    assert signed.flags[0]["code"] == batch_check.FLAG_CODE


# --- once per uploaded batch, whatever the shards and crashes --------------------------------


def test_the_verdict_is_made_once_for_the_whole_batch_after_its_last_shard(
    guarded_model: ModelVersion, case, settings: LazySettings
):
    settings.INFERENCE_CHUNK_SIZE = 8
    settings.BATCH_SHARD_IMAGES = 8
    batch = services.submit_batch(
        case=case, created_by=None, files=cell_pngs(24, seed=4, shifted=True)
    )

    batch_job.process_batch(batch_id=batch.pk)  # its first shard of three
    batch.refresh_from_db()
    assert batch.ood_check == Batch.Check.PENDING
    states = batch_cells(batch=batch)
    classified = [s for s in states if s.predicted is not None]
    assert len(classified) == 8
    assert {s.current for s in states} == {PENDING}  # nothing auto-accepted meanwhile

    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.ood_check == Batch.Check.PENDING  # no verdict from a shard but the last
    batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert batch.status == Batch.Status.DONE
    assert batch.ood_check == Batch.Check.FLAGGED
    assert batch.ood_cells_checked == 24  # every cell, not the last shard's


def test_a_crash_before_the_verdict_is_committed_leaves_it_pending_and_the_next_delivery_decides(
    guarded_model: ModelVersion, case, monkeypatch: pytest.MonkeyPatch
):
    batch = services.submit_batch(case=case, created_by=None, files=cell_pngs(5, seed=4))

    def crash(**_: object) -> None:
        raise RuntimeError("worker lost")

    with monkeypatch.context() as patch:
        patch.setattr(batch_job, "write_preliminary_report", crash)
        with pytest.raises(RuntimeError):
            batch_job.process_batch(batch_id=batch.pk)
    batch.refresh_from_db()
    assert (batch.status, batch.ood_check) == (Batch.Status.PROCESSING, Batch.Check.PENDING)
    assert batch.ood_score is None
    assert not batch.reports.exists()

    batch_job.process_batch(batch_id=batch.pk)  # the redelivery
    batch.refresh_from_db()
    first = (batch.ood_check, batch.ood_score, batch.ood_checked_at)
    assert batch.status == Batch.Status.DONE
    assert batch.ood_check == Batch.Check.PASSED
    assert Prediction.objects.filter(cell__image__batch=batch).count() == 5
    assert batch.reports.count() == 1

    batch_job.process_batch(batch_id=batch.pk)  # a late duplicate message changes nothing
    batch.refresh_from_db()
    assert (batch.ood_check, batch.ood_score, batch.ood_checked_at) == first


# --- in words ---------------------------------------------------------------------------------


def test_a_batch_never_checked_says_nothing(db: None) -> None:
    assert batch_check.describe(BatchFactory.create()) is None


def test_a_flagged_batch_is_explained_with_its_score_and_limit(db: None) -> None:
    batch = BatchFactory.create(
        ood_check=Batch.Check.FLAGGED,
        ood_score=6.137,
        ood_threshold=3.168,
        ood_threshold_size=20,
        ood_cells_checked=24,
    )
    summary = batch_check.describe(batch)
    assert summary is not None
    assert summary.flagged
    assert not summary.auto_accepts
    assert summary.headline == batch_check.HEADLINE
    assert "No cell is accepted automatically" in summary.explanation
    assert summary.figures == (
        "Distance score 6.14, above the limit of 3.17 set from batches of 20 of the model's "
        "validation cells; 24 cells checked."
    )


def test_the_worker_computes_the_guard_features_on_the_engine_it_classifies_with(
    guarded_model: ModelVersion, settings: LazySettings
) -> None:
    from webportal.pipeline.classifiers import load_classifier

    if settings.INFERENCE_ENGINE == "eager":
        pytest.skip("INFERENCE_ENGINE=eager: no faster engine to move the features to")
    classifier = load_classifier(model_version=guarded_model)
    assert classifier.engine != "eager"
    assert classifier.feature_engine == classifier.engine


def test_the_cells_located_in_fields_are_checked_as_the_classifier_read_them(
    guarded_model: ModelVersion, case
) -> None:
    from PIL import Image as PILImage

    from ml.locate import crop_cell
    from tests.webportal.cases.test_fields import FIELDS, field_files
    from webportal.pipeline.classifiers import load_classifier

    names = ["BloodImage_00000.jpg", "BloodImage_00031.jpg"]
    batch = _run(case, field_files(names))
    cells = list(Cell.objects.filter(image__batch=batch).select_related("image").order_by("id"))

    assert batch.status == Batch.Status.DONE
    assert batch.ood_check in {Batch.Check.PASSED, Batch.Check.FLAGGED}
    assert batch.ood_cells_checked == len(cells) > 0
    # The same score from the crops cut here, field by field, as ml.locate cuts them.
    crops = []
    for cell in cells:
        assert cell.box is not None
        x, y, w, h = cell.box
        with PILImage.open(FIELDS / cell.image.original_name) as field:
            crops.append(crop_cell(field.convert("RGB"), (x, y, x + w, y + h)))
    classifier = load_classifier(model_version=guarded_model)
    expected = classifier.check_batch(classifier.preprocess(crops))
    assert expected is not None
    assert batch.ood_score == pytest.approx(expected.score, rel=1e-5)


def test_a_batch_of_more_cells_than_the_check_takes_is_judged_on_exactly_that_many(
    guarded_model: ModelVersion, case, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verdict, "BATCH_CHECK_CELLS", 10)
    batch = _run(case, cell_pngs(13, seed=3))

    assert batch.ood_cells_checked == 10
    assert batch.ood_threshold_size == 5  # the largest calibrated size (1, 5, 20) not above 10
