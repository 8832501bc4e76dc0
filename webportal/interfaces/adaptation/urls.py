from django.urls import path

from webportal.interfaces.adaptation import views

app_name = "adaptation"

urlpatterns = [
    path("lab/<int:lab_id>/adaptation/", views.adaptation, name="adaptation"),
    path("lab/<int:lab_id>/adaptation/start/", views.start, name="start"),
    path("lab/<int:lab_id>/adaptation/<int:adaptation_job_id>/", views.job, name="job"),
    path(
        "lab/<int:lab_id>/adaptation/<int:adaptation_job_id>/decide/",
        views.decide,
        name="decide",
    ),
]
