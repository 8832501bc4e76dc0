from django.apps import AppConfig


class AdaptationConfig(AppConfig):
    name = "webportal.adaptation"
    label = "adaptation"
