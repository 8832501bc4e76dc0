from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from webportal.api import ops

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", ops.healthz, name="healthz"),
    path("metrics", ops.metrics, name="metrics"),
    path("api/", include("webportal.api.urls")),
    path("", include("webportal.cases.urls")),
]
