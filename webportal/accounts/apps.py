from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "webportal.accounts"
    label = "accounts"

    def ready(self) -> None:
        from webportal.accounts import lockout  # noqa: F401 (connects the lockout's audit)
