from django.apps import AppConfig


class CasesConfig(AppConfig):
    name = "webportal.cases"
    label = "cases"
