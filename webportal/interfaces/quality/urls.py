from django.urls import path

from webportal.interfaces.quality import views

app_name = "quality"

urlpatterns = [
    path("quality/", views.quality_home, name="quality_home"),
    path("lab/<int:lab_id>/quality/", views.agreement, name="agreement"),
]
