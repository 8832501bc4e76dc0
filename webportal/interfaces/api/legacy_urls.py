"""The unversioned paths of the first API, kept working for existing clients.

They answer exactly as their /api/v1/ twins (same views, same shapes) and are left out of the
schema; new clients use /api/v1/.
"""

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from webportal.interfaces.api import views

urlpatterns = [
    path(
        "batches/<int:batch_id>/",
        login_not_required(views.BatchDetail.as_view()),
        name="api_batch_detail",
    ),
    path(
        "batches/<int:batch_id>/cancel/",
        login_not_required(views.BatchCancel.as_view()),
        name="api_batch_cancel",
    ),
    path(
        "cases/<int:case_id>/batches/",
        login_not_required(views.CaseBatches.as_view()),
        name="api_case_batches",
    ),
]
