from django.urls import path

from webportal.interfaces.reports import views

app_name = "reports"

urlpatterns = [
    path("reports/<int:report_id>/", views.report_detail, name="report"),
    path("reports/<int:report_id>/edit", views.report_edit, name="edit"),
    path("reports/<int:report_id>/amend", views.report_amend, name="amend"),
    path("reports/<int:report_id>/pdf", views.report_pdf, name="pdf"),
    path("lab/<int:lab_id>/vocabulary/", views.lab_vocabulary, name="vocabulary"),
]
