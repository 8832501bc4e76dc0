from django.contrib.auth.decorators import login_not_required
from django.urls import path

from webportal.api import views

# The API authenticates with sessions or tokens through DRF, which answers 401/403 in JSON;
# the portal's login redirect must not get in its way.
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
