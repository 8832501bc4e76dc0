"""The worker's side of the model registry: classifiers loaded once per process and kept.

Only worker processes (and tools such as the benchmark) import this module: it brings in
PyTorch, which the portal never loads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from django.conf import settings

from ml.checkpoint import sha256_of
from ml.inference import Classifier
from webportal.accounts.models import Lab
from webportal.cases.models import ModelVersion
from webportal.cases.services import ServiceError

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
    _classifiers[model_version.checkpoint_sha256] = classifier
    logger.info("loaded %s on %s", model_version, classifier.device)
    return classifier


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
    newest = ModelVersion.objects.order_by("-created_at", "-id").first()
    if newest is not None:
        wanted.add(newest)
    for model_version in wanted:
        if model_version is not None:
            classifier = load_classifier(model_version=model_version)
            chunk_size = chunk_size_for(classifier=classifier)
            classifier.warm_up(chunk_size)
            logger.info("warmed up %s with a batch of %d", model_version, chunk_size)
