from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from webportal.audit.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin[AuditEvent]):
    """Read-only: the trail is written by the services, never by hand."""

    list_display = ["created_at", "lab", "actor", "action", "object_type", "object_id"]
    list_filter = ["action", "lab"]
    search_fields = ["object_id", "actor__username"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
