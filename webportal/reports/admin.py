from django.contrib import admin

from webportal.admin import ReadOnlyAdmin
from webportal.reports.models import Report


@admin.register(Report)
class ReportAdmin(ReadOnlyAdmin[Report]):
    """Read-only: reports are snapshots written and signed through the portal's services."""

    list_display = ["id", "batch", "version", "status", "total_cells", "signed_by", "created_at"]
    list_filter = ["status"]
    list_select_related = ["batch__case", "signed_by"]
