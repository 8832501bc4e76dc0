from django.apps import AppConfig


class QualityConfig(AppConfig):
    name = "webportal.quality"
    label = "quality"
    verbose_name = "Agreement between the model and the reviewers"
