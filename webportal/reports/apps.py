from django.apps import AppConfig


class ReportsConfig(AppConfig):
    name = "webportal.reports"
    label = "reports"
