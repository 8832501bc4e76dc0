from django.urls import path

from webportal.interfaces.worklist import views

app_name = "worklist"

urlpatterns = [
    path("worklist/", views.worklist, name="worklist"),
    path("patients/<int:patient_id>/", views.patient_detail, name="patient_detail"),
]
