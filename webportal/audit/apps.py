from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "webportal.audit"
    label = "audit"
    verbose_name = "Audit trail"
