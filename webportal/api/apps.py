from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "webportal.api"
    label = "api"

    def ready(self) -> None:
        from webportal.api import schema  # noqa: F401  (registers the token scheme)
