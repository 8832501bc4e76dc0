from django.apps import AppConfig


class PipelineConfig(AppConfig):
    """An app only for its management commands (register_model, seed_demo, rescue_batches),
    which read checkpoints or run the worker's code: no models, no migrations."""

    name = "webportal.pipeline"
    label = "pipeline"
