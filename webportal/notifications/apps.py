from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    """No models (the webhook and LIS rows are the api app's): the receivers of the report
    lifecycle's signals, connected here."""

    name = "webportal.notifications"
    label = "notifications"

    def ready(self) -> None:
        from webportal.notifications import receivers

        receivers.connect()
