"""factory_boy factories for the portal's models."""

from __future__ import annotations

from collections.abc import Sequence as Seq

import factory.django
from django.contrib.auth.models import User
from factory.declarations import LazyAttribute, LazyFunction, SelfAttribute, Sequence, SubFactory

from webportal.accounts.models import Lab, Membership, Role
from webportal.adaptation.models import AdaptationJob
from webportal.cases.models import (
    Batch,
    Case,
    Cell,
    Image,
    ModelVersion,
    Patient,
    Prediction,
    Review,
)
from webportal.reports.models import Report

PBC_CLASSES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]

# Every factory user's password.
PASSWORD = "a-long-test-password-42"


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = Sequence(lambda n: f"user{n}")
    password = factory.django.Password(PASSWORD)


class LabFactory(factory.django.DjangoModelFactory[Lab]):
    class Meta:
        model = Lab

    name = Sequence(lambda n: f"Lab {n}")
    slug = Sequence(lambda n: f"lab-{n}")


class MembershipFactory(factory.django.DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    user = SubFactory(UserFactory)
    lab = SubFactory(LabFactory)
    role = Role.STAFF


class CaseFactory(factory.django.DjangoModelFactory[Case]):
    class Meta:
        model = Case

    lab = SubFactory(LabFactory)
    accession_number = Sequence(lambda n: f"ACC-{n:05d}")


class ModelVersionFactory(factory.django.DjangoModelFactory[ModelVersion]):
    """A registry row without a checkpoint file: for pages and queries, not for inference."""

    class Meta:
        model = ModelVersion

    name = Sequence(lambda n: f"model-{n}")
    architecture = "mobilenet_v2"
    classes = ["lymphocyte", "monocyte", "neutrophil"]
    checkpoint_path = "/nonexistent.pt"
    checkpoint_sha256 = Sequence(lambda n: f"{n:064x}")
    input_size = 64
    mean = [0.5, 0.5, 0.5]
    std = [0.25, 0.25, 0.25]
    threshold = 0.5
    # A batch guard as registered from a checkpoint's `ood` (guard={} for a model without one).
    guard = LazyFunction(lambda: {"thresholds": {"1": 6.5, "20": 3.5, "100": 3.1}})


class PatientFactory(factory.django.DjangoModelFactory[Patient]):
    class Meta:
        model = Patient

    lab = SubFactory(LabFactory)
    external_id = Sequence(lambda n: f"MRN-{n:05d}")


class BatchFactory(factory.django.DjangoModelFactory[Batch]):
    class Meta:
        model = Batch

    case = SubFactory(CaseFactory)
    model_version = SubFactory(ModelVersionFactory)
    status = Batch.Status.DONE


def differential(**counts: int) -> list[dict[str, object]]:
    """A report snapshot from counts per label, with percentages as the reports compute them."""
    total = sum(counts.values())
    return [
        {"label": label, "count": count, "percent": round(100 * count / total, 1) if total else 0.0}
        for label, count in counts.items()
    ]


class ReportFactory(factory.django.DjangoModelFactory[Report]):
    class Meta:
        model = Report

    batch = SubFactory(BatchFactory)
    model_version = SelfAttribute("batch.model_version")
    differential = LazyFunction(
        lambda: differential(lymphocyte=30, monocyte=5, neutrophil=60, unidentified=5)
    )
    total_cells = LazyAttribute(
        lambda report: sum(int(row["count"]) for row in report.differential)
    )


def classified_batch(
    *,
    case: Case,
    model_version: ModelVersion,
    predictions: Seq[tuple[str, float]],
    with_report: bool = True,
    **fields: object,
) -> Batch:
    """A finished batch of one single-cell image per (label, confidence), made in a few bulk
    inserts (no files, no model), with its preliminary report; `fields` set other Batch
    fields (e.g. the batch guard's verdict, ood_check=...)."""
    from webportal.reports.services import write_preliminary_report

    batch = Batch.objects.create(
        case=case,
        model_version=model_version,
        status=Batch.Status.DONE,
        total_images=len(predictions),
        processed_images=len(predictions),
        **fields,
    )
    images = Image.objects.bulk_create(
        [
            Image(batch=batch, original_name=f"cell-{i:05d}.png", status=Image.Status.OK)
            for i in range(len(predictions))
        ]
    )
    cells = Cell.objects.bulk_create([Cell(image=image) for image in images])
    classes = list(model_version.classes)
    Prediction.objects.bulk_create(
        [
            Prediction(
                cell=cell,
                model_version=model_version,
                label=label,
                confidence=confidence,
                probabilities={
                    name: confidence if name == label else (1 - confidence) / (len(classes) - 1)
                    for name in classes
                },
            )
            for cell, (label, confidence) in zip(cells, predictions, strict=True)
        ]
    )
    if with_report:
        write_preliminary_report(batch=batch)
    return batch


class ReviewFactory(factory.django.DjangoModelFactory[Review]):
    class Meta:
        model = Review

    reviewer = SubFactory(UserFactory)
    reviewer_role = Role.PATHOLOGIST
    label = "neutrophil"


class AdaptationJobFactory(factory.django.DjangoModelFactory[AdaptationJob]):
    class Meta:
        model = AdaptationJob

    lab = SubFactory(LabFactory)
    base_model = SubFactory(ModelVersionFactory)


# A colour per class, so a tiny model can tell the classes of reviewed_batch's pictures apart.
CLASS_COLOURS = [(200, 60, 60), (60, 160, 60), (60, 60, 200), (180, 160, 40), (140, 60, 160)]


def cell_png(label_index: int, seed: int, size: int = 40) -> bytes:
    """A small PNG: the class's colour with a little noise (a different file for each seed)."""
    import io

    import numpy as np
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    colour = np.array(CLASS_COLOURS[label_index % len(CLASS_COLOURS)], dtype=np.int16)
    pixels = colour + rng.integers(-25, 26, size=(size, size, 3))
    buffer = io.BytesIO()
    PILImage.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def reviewed_batch(
    *,
    case: Case,
    model_version: ModelVersion,
    labels: Seq[str],
    reviewer: User,
    with_files: bool = False,
    predicted: str | None = None,
) -> Batch:
    """A finished batch of one single-cell image per label, each cell reviewed with its label
    (a person's confirmation or correction of the model's `predicted`, default: the label).
    With files, each image is a small PNG in its class's colour (cell_png)."""
    from django.core.files.base import ContentFile

    batch = Batch.objects.create(
        case=case,
        model_version=model_version,
        status=Batch.Status.DONE,
        total_images=len(labels),
        processed_images=len(labels),
    )
    classes = list(model_version.classes)
    cells = []
    for i, label in enumerate(labels):
        image = Image.objects.create(
            batch=batch, original_name=f"cell-{i:05d}.png", status=Image.Status.OK
        )
        if with_files:
            seed = batch.pk * 100_000 + i
            index = classes.index(label) if label in classes else 0
            image.file.save(f"cell-{i:05d}.png", ContentFile(cell_png(index, seed)))
        cells.append(Cell.objects.create(image=image))
    Prediction.objects.bulk_create(
        [
            Prediction(
                cell=cell,
                model_version=model_version,
                label=predicted or label,
                confidence=0.9,
                probabilities={
                    name: 0.9 if name == (predicted or label) else 0.0 for name in classes
                },
            )
            for cell, label in zip(cells, labels, strict=True)
        ]
    )
    Review.objects.bulk_create(
        [
            Review(cell=cell, reviewer=reviewer, reviewer_role=Role.PATHOLOGIST, label=label)
            for cell, label in zip(cells, labels, strict=True)
        ]
    )
    return batch


def allow_small_counts(lab: Lab) -> None:
    """The lab signs from one leukocyte on (its own minimum: reports.ReportPolicy), for tests
    of other rules on small batches; the default minimum of 100 is tested in
    tests/webportal/reports/test_minimum_and_intervals.py."""
    from webportal.reports.models import ReportPolicy

    ReportPolicy.objects.update_or_create(lab=lab, defaults={"min_leukocytes": 1})
