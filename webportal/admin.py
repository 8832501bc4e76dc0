"""The admin's view of clinical records: read-only, because the portal's services are their
only writers (they check roles, keep the audit trail and never update a prediction)."""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest

_ModelT = TypeVar("_ModelT", bound=Model)


class ReadOnlyAdmin(admin.ModelAdmin[_ModelT]):
    """Lists and shows records; no add, change or delete, whatever the user's permissions."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
