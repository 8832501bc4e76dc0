"""API v1 (`/api/v1/`). The paths are a contract: add, never rename."""

from django.contrib.auth.decorators import login_not_required
from django.urls import path

from webportal.interfaces.api import cells, reports, views, webhook_views

app_name = "api"

# The API authenticates with tokens or sessions through DRF, which answers 401/403 in JSON;
# the portal's login redirect must not get in its way.
_open = login_not_required

urlpatterns = [
    path("cases/", _open(views.CaseList.as_view()), name="case_list"),
    path("cases/<int:case_id>/", _open(views.CaseDetail.as_view()), name="case_detail"),
    path("cases/<int:case_id>/batches/", _open(views.CaseBatches.as_view()), name="case_batches"),
    path("patients/", _open(views.PatientList.as_view()), name="patient_list"),
    path("patients/<int:patient_id>/", _open(views.PatientDetail.as_view()), name="patient_detail"),
    path("batches/", _open(views.BatchList.as_view()), name="batch_list"),
    path("batches/<int:batch_id>/", _open(views.BatchDetail.as_view()), name="batch_detail"),
    path("batches/<int:batch_id>/cancel/", _open(views.BatchCancel.as_view()), name="batch_cancel"),
    path(
        "batches/<int:batch_id>/report/", _open(reports.LatestReport.as_view()), name="batch_report"
    ),
    path(
        "batches/<int:batch_id>/report/pdf/",
        _open(reports.LatestReportPdf.as_view()),
        name="batch_report_pdf",
    ),
    path(
        "batches/<int:batch_id>/report/sign/",
        _open(reports.SignReport.as_view()),
        name="batch_report_sign",
    ),
    path(
        "batches/<int:batch_id>/report/amend/",
        _open(reports.AmendReport.as_view()),
        name="batch_report_amend",
    ),
    path(
        "batches/<int:batch_id>/report/fhir/",
        _open(reports.LatestReportFhir.as_view()),
        name="batch_report_fhir",
    ),
    path(
        "batches/<int:batch_id>/report/hl7/",
        _open(reports.LatestReportHL7.as_view()),
        name="batch_report_hl7",
    ),
    path(
        "batches/<int:batch_id>/reports/<int:version>/hl7/",
        _open(reports.ReportVersionHL7.as_view()),
        name="batch_report_version_hl7",
    ),
    path(
        "batches/<int:batch_id>/reports/",
        _open(reports.ReportVersions.as_view()),
        name="batch_reports",
    ),
    path(
        "batches/<int:batch_id>/reports/<int:version>/",
        _open(reports.ReportVersion.as_view()),
        name="batch_report_version",
    ),
    path(
        "batches/<int:batch_id>/reports/<int:version>/pdf/",
        _open(reports.ReportVersionPdf.as_view()),
        name="batch_report_version_pdf",
    ),
    path(
        "batches/<int:batch_id>/reports/<int:version>/fhir/",
        _open(reports.ReportVersionFhir.as_view()),
        name="batch_report_version_fhir",
    ),
    path("batches/<int:batch_id>/cells/", _open(cells.BatchCells.as_view()), name="batch_cells"),
    path(
        "batches/<int:batch_id>/reviews/",
        _open(cells.BatchReviews.as_view()),
        name="batch_reviews",
    ),
    path("cells/<int:cell_id>/", _open(cells.CellDetail.as_view()), name="cell_detail"),
    path("cells/<int:cell_id>/image/", _open(cells.CellImage.as_view()), name="cell_image"),
    path("cells/<int:cell_id>/reviews/", _open(cells.CellReviews.as_view()), name="cell_reviews"),
    path("webhooks/", _open(webhook_views.WebhookList.as_view()), name="webhook_list"),
    path(
        "webhooks/<int:webhook_id>/",
        _open(webhook_views.WebhookDetail.as_view()),
        name="webhook_detail",
    ),
    path(
        "webhooks/<int:webhook_id>/deliveries/",
        _open(webhook_views.WebhookDeliveries.as_view()),
        name="webhook_deliveries",
    ),
    path(
        "webhooks/<int:webhook_id>/deliveries/<int:delivery_id>/redeliver/",
        _open(webhook_views.WebhookRedeliver.as_view()),
        name="webhook_redeliver",
    ),
]
