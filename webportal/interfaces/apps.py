from django.apps import AppConfig


class InterfacesConfig(AppConfig):
    """No models: the API's schema extensions are registered when the app is ready."""

    name = "webportal.interfaces"
    label = "interfaces"

    def ready(self) -> None:
        from webportal.interfaces.api import schema  # noqa: F401  (registers the token scheme)
