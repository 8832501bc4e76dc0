from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from django.views.defaults import server_error
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from webportal.interfaces.api import errors, ops
from webportal.interfaces.worklist import views as worklist_views


@login_not_required
def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """Browsers ask for /favicon.ico on pages that name no icon (the admin's)."""
    return HttpResponseRedirect(static("portal/favicon.svg"))


urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("favicon.ico", favicon, name="favicon"),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics, name="metrics"),
    path("api/v1/", include("webportal.interfaces.api.urls")),
    path("api/schema/", login_not_required(SpectacularAPIView.as_view()), name="api_schema"),
    # The split view serves Swagger UI's start-up script as a file: no inline script (CSP).
    path(
        "api/docs/",
        login_not_required(SpectacularSwaggerSplitView.as_view(url_name="api_schema")),
        name="api_docs",
    ),
    path("api/", include("webportal.interfaces.api.legacy_urls")),
    re_path(r"^api/", login_not_required(csrf_exempt(errors.json_not_found))),
    path("integrations/", include("webportal.interfaces.api.portal_urls")),
    path("account/tokens/", include("webportal.interfaces.api.personal_urls")),
    path("", worklist_views.home, name="home"),
    path("", include("webportal.interfaces.worklist.urls")),
    path("", include("webportal.interfaces.accounts.urls")),
    path("", include("webportal.interfaces.adaptation.urls")),
    path("", include("webportal.interfaces.audit.urls")),
    path("", include("webportal.interfaces.quality.urls")),
    path("", include("webportal.interfaces.cases.urls")),
    path("", include("webportal.interfaces.reports.urls")),
]


def handler500(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return errors.json_server_error(request)
    return server_error(request)
