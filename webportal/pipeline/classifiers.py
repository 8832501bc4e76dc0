"""The worker's side of the model registry: classifiers loaded once per process and kept.

Only worker processes (and tools such as the benchmark) import this module: it brings in
PyTorch, which the portal never loads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from django.conf import settings
from PIL import Image as PILImage

from ml.checkpoint import sha256_of
from ml.engine import CHECK_CELLS_DIR, choose_engine
from ml.inference import Classifier
from webportal.accounts.models import Lab
from webportal.cases.models import Image, ModelVersion
from webportal.core.errors import ServiceError

logger = logging.getLogger(__name__)

_classifiers: dict[str, Classifier] = {}


def load_classifier(*, model_version: ModelVersion) -> Classifier:
    """The classifier for a model version, loaded once per process and kept."""
    cached = _classifiers.get(model_version.checkpoint_sha256)
    if cached is not None:
        return cached
    path = Path(model_version.checkpoint_path)
    if not path.is_file():
        raise ServiceError(f"Checkpoint of {model_version} is missing at {path}")
    if sha256_of(path) != model_version.checkpoint_sha256:
        # A changed file would silently give predictions no registered version made.
        raise ServiceError(f"Checkpoint at {path} does not match the sha256 registered")
    classifier = Classifier.load(path)
    if classifier.device.type == "cpu":
        use_fastest_engine(classifier, model_version=model_version)
    _classifiers[model_version.checkpoint_sha256] = classifier
    logger.info("loaded %s on %s (engine %s)", model_version, classifier.device, classifier.engine)
    return classifier


# Cells the engine is checked on when the model has classified none yet here: real cells
# shipped inside the ml package, so an installed worker has them without the source tree.
DEMO_CELLS = CHECK_CELLS_DIR
CHECK_CELLS = 8


def use_fastest_engine(classifier: Classifier, *, model_version: ModelVersion) -> None:
    """Swap the classifier's model for the fastest engine that gives eager's answers
    (INFERENCE_ENGINE; ml.engine.choose_engine), checked on a few real cells: the latest this
    model classified here, else the demo cells shipped with the code. Falls back to eager,
    with the reason logged."""
    wanted = settings.INFERENCE_ENGINE
    if wanted == "eager":
        return
    images = _check_cells(model_version)
    check = classifier.preprocess(images)
    choice = choose_engine(
        classifier.eager, input_size=classifier.input_size, check=check, wanted=wanted
    )
    for reason in choice.passed_over:
        logger.warning("engine for %s: %s", model_version, reason)
    if choice.name == "eager" and wanted != "eager":
        logger.warning("engine for %s: falling back to eager", model_version)
    classifier.model = choice.model
    classifier.engine = choice.name
    logger.info(
        "engine for %s: %s (checked on %d cells, largest probability change %.1g)",
        model_version,
        choice.name,
        len(images),
        choice.max_probability_change,
    )
    if classifier.ood is not None and choice.name != "eager":
        # The batch guard's features on the same engine, if it gives the guard's scores.
        refused = classifier.use_feature_engine(choice.name, check=check)
        if refused:
            logger.warning("batch guard of %s stays on eager: %s", model_version, refused)
        else:
            logger.info("batch guard of %s: features on %s", model_version, choice.name)


def _check_cells(model_version: ModelVersion) -> list[PILImage.Image]:
    recent = (
        Image.objects.filter(batch__model_version=model_version, status=Image.Status.OK)
        .exclude(file="")
        .order_by("-id")[:CHECK_CELLS]
    )
    cells: list[PILImage.Image] = []
    for row in recent:
        try:
            with row.file.open("rb") as handle, PILImage.open(handle) as picture:
                cells.append(picture.convert("RGB"))
        except OSError:
            continue
    if len(cells) < CHECK_CELLS:
        for path in sorted(DEMO_CELLS.glob("*.jpg"))[: CHECK_CELLS - len(cells)]:
            with PILImage.open(path) as picture:
                cells.append(picture.convert("RGB"))
    return cells


def chunk_size_for(*, classifier: Classifier) -> int:
    """Images per forward pass: large on a GPU, small on a CPU (settings)."""
    if classifier.device.type == "cuda":
        return settings.INFERENCE_CHUNK_SIZE_GPU
    return settings.INFERENCE_CHUNK_SIZE


def preload_classifiers() -> None:
    """Load every model a lab would use now, so the first batch does not wait for it."""
    if settings.INFERENCE_THREADS:
        torch.set_num_threads(settings.INFERENCE_THREADS)
    wanted = {lab.active_model for lab in Lab.objects.select_related("active_model")}
    wanted.discard(None)
    newest = ModelVersion.objects.filter(lab=None).order_by("-created_at", "-id").first()
    if newest is not None:
        wanted.add(newest)
    for model_version in wanted:
        if model_version is not None:
            classifier = load_classifier(model_version=model_version)
            chunk_size = chunk_size_for(classifier=classifier)
            classifier.warm_up(chunk_size)
            logger.info("warmed up %s with a batch of %d", model_version, chunk_size)


def loaded_engines() -> list[str]:
    """The engines of the classifiers this process has loaded (for its worker's heartbeat)."""
    return sorted({classifier.engine for classifier in _classifiers.values()})
