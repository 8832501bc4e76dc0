from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "webportal.worklist"
    label = "worklist"
    verbose_name = "Worklist and patient history"
