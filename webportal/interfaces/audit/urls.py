from django.urls import path

from webportal.interfaces.audit import views

app_name = "audit"

urlpatterns = [
    path("lab/<int:lab_id>/audit/", views.audit_trail, name="audit_trail"),
]
